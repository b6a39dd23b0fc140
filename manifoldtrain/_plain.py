"""Settings as plain, canonical data: what checkpoints compare and fingerprints hash."""

from __future__ import annotations

import hashlib
import json

import attrs
import numpy as np
import torch


def qualified_name(cls: type) -> str:
    """``module:QualName`` of a class (what :func:`manifoldtrain.registry.Registry.get` imports)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def plain(value):
    """``value`` as JSON-able data: attrs instances as ``{"kind": "module:Class", field: ...}``,
    tuples as lists, tensors and arrays by content (dtype, shape and SHA-256 of the bytes),
    dtypes and classes by name; other objects with a ``__dict__`` by their public attributes."""
    if attrs.has(type(value)):
        fields = {f.name: plain(getattr(value, f.name)) for f in attrs.fields(type(value)) if not f.name.startswith("_")}
        return {"kind": qualified_name(type(value)), **fields}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.dtype == torch.bfloat16 else value).contiguous().numpy()
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(data.tobytes()).hexdigest(), "dtype": str(data.dtype), "shape": list(data.shape)}
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, type):
        return qualified_name(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    public = {k: v for k, v in vars(value).items() if not k.startswith("_")} if hasattr(value, "__dict__") else None
    if public is not None:
        return {"kind": qualified_name(type(value)), **plain(public)}
    return {"kind": qualified_name(type(value)), "repr": repr(value)}


def digest(value) -> str:
    """SHA-256 (hex) of ``plain(value)`` as canonical JSON (sorted keys, exact floats)."""
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True, allow_nan=True).encode()).hexdigest()


def first_difference(theirs, mine, path: str, labels: tuple[str, str] = ("in the checkpoint", "now")) -> str | None:
    """The first place where two plain values differ, as ``path: A <labels[0]>, B <labels[1]>``."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for key in list(mine) + [k for k in theirs if k not in mine]:
            diff = first_difference(theirs.get(key, "<missing>"), mine.get(key, "<missing>"), f"{path}.{key}", labels)
            if diff is not None:
                return diff
        return None
    if isinstance(theirs, list) and isinstance(mine, list) and len(theirs) == len(mine):
        for k, (a, b) in enumerate(zip(theirs, mine)):
            diff = first_difference(a, b, f"{path}[{k}]", labels)
            if diff is not None:
                return diff
        return None
    if isinstance(theirs, str) and isinstance(mine, str) and theirs != mine and ("\n" in theirs or "\n" in mine):
        a, b = theirs.splitlines(), mine.splitlines()  # a module's repr: the first line that differs, not its head
        k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        theirs = a[k].strip() if k < len(a) else "<no such line>"
        mine = b[k].strip() if k < len(b) else "<no such line>"
        path = f"{path} (line {k + 1})"
    if theirs != mine:
        show = lambda v: (v if len(repr(v)) < 80 else repr(v)[:77] + "...")  # noqa: E731
        return f"{path}: {show(theirs)!r} {labels[0]}, {show(mine)!r} {labels[1]}"
    return None
