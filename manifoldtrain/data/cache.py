"""Single-file jet caches: :func:`save_jets`, :func:`load_jets` (which also reads a sharded one
into memory) and :func:`cached_jets` (format in :mod:`manifoldtrain.data`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from manifoldtrain._io import publish_mode
from manifoldtrain._validation import first_non_finite
from manifoldtrain.data.dataset import JetDataset, check_finite_jets, check_finite_points, fingerprint, generate_jets
from manifoldtrain.data.format import (COMPONENTS, FORMAT, FORMAT_VERSION, SHARDS_FORMAT, check_cache_target, move_into_place,
                                       non_finite_in, read_meta)
from manifoldtrain.data.shards import JetCache
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

def save_jets(dataset: JetDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a cache directory at ``path`` (atomically: complete or absent).

    ``path`` must not exist, or be an empty folder or a jet cache, which is replaced
    (:func:`check_cache_target`); anything else is refused, nothing is deleted. Files and
    folders get the permissions of the user's umask. Jets holding NaN or infinite values are
    refused (a cache holds finite values only), naming the sample; so are such points.
    """
    check_finite_points(dataset.points, "dataset: has")
    check_finite_jets(dataset.inputs, dataset.targets, "dataset:")
    path = check_cache_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        arrays = {"points": dataset.points}
        for prefix, jet in (("input", dataset.inputs), ("target", dataset.targets)):
            for name, comp in zip(COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = comp
        for name, t in arrays.items():
            np.save(tmp / f"{name}.npy", t.detach().cpu().numpy())
            publish_mode(tmp / f"{name}.npy")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **dataset.meta}
        meta["shapes"] = {name: list(t.shape) for name, t in arrays.items()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        publish_mode(tmp / "meta.json")
        publish_mode(tmp, directory=True)
        move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_jets(path: str | os.PathLike, *, expected_fingerprint: str | None = None) -> JetDataset:
    """Load a cache directory into memory: one written by :func:`save_jets`, or a sharded one
    (``manifoldtrain generate``, :func:`generate_shards`), whose shards are concatenated.

    For a sharded cache larger than memory, read only what is needed with :class:`JetCache`
    (or train from it with :class:`~manifoldtrain.data.sources.ShardedCacheSource`).

    Raises
    ------
    FileNotFoundError
        ``path`` or its ``meta.json`` does not exist (e.g. a generation that never finished).
    ValueError
        Not a manifoldtrain jet cache, an unknown version, an unfinished sharded cache,
        missing, misshapen, truncated or otherwise damaged files (each named, with the
        remedy: write the cache again, e.g. with ``manifoldtrain generate``), a file holding NaN or
        infinite values (damaged since it was written: named with the row), or a fingerprint
        other than ``expected_fingerprint``.
    """
    path = Path(path)
    meta, remedy = read_meta(path)
    if meta.get("format") == SHARDS_FORMAT:
        with JetCache(path, expected_fingerprint=expected_fingerprint) as cache:
            return cache.load()
    meta_file = path / "meta.json"
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"path: {path} is not a {FORMAT} cache of version {FORMAT_VERSION}")
    if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"path: the cache at {path} was made with other settings (fingerprint differs)")
    shapes, order = meta.get("shapes"), meta.get("order")
    wanted = ["points"] + [f"{prefix}_{c}" for prefix in ("input", "target") for c in COMPONENTS[: (order or 0) + 1]]
    if (
        not isinstance(shapes, dict)
        or order not in (0, 1, 2)
        or any(not isinstance(shapes.get(name), list) for name in wanted)
    ):
        raise ValueError(f"path: {meta_file} lacks the order or the array shapes, or they are malformed; {remedy}")
    arrays = {}
    for name, shape in shapes.items():
        file = path / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"path: the cache at {path} lacks {file.name}; {remedy}")
        try:
            arr = np.load(file, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # truncated data or a damaged header
            raise ValueError(f"path: {file} is truncated or damaged ({err}); {remedy}") from None
        if list(arr.shape) != shape:
            raise ValueError(f"path: {file} has shape {list(arr.shape)}, meta.json says {shape}; {remedy}")
        if arr.dtype not in (np.float32, np.float64):
            raise ValueError(f"path: {file} holds {arr.dtype}, expected float32 or float64; {remedy}")
        arrays[name] = torch.from_numpy(arr)
        bad = first_non_finite(arrays[name])
        if bad is not None:
            raise non_finite_in(file, bad, bad, remedy)
    inputs = Jet(*(arrays[f"input_{c}"] for c in COMPONENTS[: order + 1]))
    targets = Jet(*(arrays[f"target_{c}"] for c in COMPONENTS[: order + 1]))
    meta = {k: v for k, v in meta.items() if k not in ("format", "version", "shapes")}
    return JetDataset(arrays["points"], inputs, targets, meta)


def cached_jets(
    manifold: Manifold,
    n: int,
    cache_dir: str | os.PathLike,
    *,
    seed: int = 0,
    order: int = 2,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> JetDataset:
    """:func:`generate_jets`, cached in ``cache_dir/<fingerprint>``: loaded when it exists, else
    generated and saved. Any change of manifold setting, size, seed, order or dtype changes the
    fingerprint, so a stale cache is never reused."""
    check_is_manifold("manifold", manifold)
    key = fingerprint(manifold, n, seed, order, dtype, compute_dtype)
    path = Path(cache_dir) / key
    if (path / "meta.json").is_file():
        return load_jets(path, expected_fingerprint=key)
    data = generate_jets(manifold, n, seed=seed, order=order, dtype=dtype, compute_dtype=compute_dtype, progress=progress)
    save_jets(data, path)
    return data


