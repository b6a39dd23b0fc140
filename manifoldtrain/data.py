"""Jets of a manifold as a data set: generation, an on-disk cache, splits.

Cache format
------------
A cache is a directory holding one data set:

* ``meta.json``: ``{"format": "manifoldtrain-jets", "version": 1, "fingerprint": ...,
  "manifold": {"class": ..., "settings": {...}}, "n", "seed", "order", "dtype",
  "compute_dtype", "shapes": {name: [...]}}``;
* one ``.npy`` file per array: ``points``, ``input_value``, ``input_d1``, ``input_d2``,
  ``target_value``, ``target_d1``, ``target_d2`` (those up to ``order``), shapes as in
  :mod:`manifoldtrain.jet`.

The *fingerprint* is a SHA-256 of canonical JSON of the manifold's class and settings (its
attrs fields, or its public attributes; tensor-valued settings by a hash of their content),
``n``, ``seed``, ``order`` and the dtypes: a cache is reused only when all of them match. A cache is written into a temporary directory beside its final
place and renamed into place when complete, so an interrupted generation never leaves a
directory that loads as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import attrs
import numpy as np
import torch

from manifoldtrain._plain import digest, plain
from manifoldtrain._validation import check_int, check_tensor, dtype_name
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold

__all__ = ["JetDataset", "generate_jets", "load_jets", "save_jets", "cached_jets", "fingerprint", "is_jet_cache", "check_cache_target"]

FORMAT = "manifoldtrain-jets"
FORMAT_VERSION = 1
_COMPONENTS = ("value", "d1", "d2")


def manifold_description(manifold: Manifold) -> dict:
    """Class and settings of a manifold, as canonical JSON-able data
    (:func:`manifoldtrain._plain.plain`: attrs fields, tensors by content hash)."""
    settings = plain(manifold)
    return {"class": settings.pop("kind"), "settings": settings}


def _provenance(manifold: Manifold, n: int, seed: int, order: int, dtype: torch.dtype, compute_dtype: torch.dtype) -> dict:
    """What makes a generated data set what it is (JSON-able)."""
    return {
        "manifold": manifold_description(manifold),
        "n": n,
        "seed": seed,
        "order": order,
        "dtype": dtype_name("dtype", dtype),
        "compute_dtype": dtype_name("compute_dtype", compute_dtype),
    }


def fingerprint(manifold: Manifold, n: int, seed: int, order: int, dtype: torch.dtype, compute_dtype: torch.dtype) -> str:
    """SHA-256 (hex) identifying a generated data set: manifold settings, size, seed, order, dtypes."""
    return digest({"format": FORMAT, "version": FORMAT_VERSION, **_provenance(manifold, n, seed, order, dtype, compute_dtype)})


@attrs.frozen(eq=False)
class JetDataset:
    """Points with the jets of the manifold's input and target there.

    Attributes
    ----------
    points : Tensor
        ``[n, *point_shape]``.
    inputs, targets : Jet
        ``value [n, ...]``, ``d1 [n, d, ...]``, ``d2 [n, d(d+1)/2, ...]``.
    meta : dict
        Where the data came from (manifold, seed, fingerprint), JSON-able.
    """

    points: torch.Tensor
    inputs: Jet
    targets: Jet
    meta: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        n = self.points.shape[0]
        if len(self.inputs) != n or len(self.targets) != n:
            raise ValueError(
                f"inputs, targets: expected {n} samples like points, got {len(self.inputs)} and {len(self.targets)}"
            )
        if self.inputs.order != self.targets.order:
            raise ValueError(f"targets: expected order {self.inputs.order} like inputs, got {self.targets.order}")

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def order(self) -> int:
        return self.inputs.order

    def subset(self, index: torch.Tensor | slice) -> JetDataset:
        """The samples at ``index`` (a slice or an index tensor)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.points.device)
        return JetDataset(self.points[index], self.inputs[index], self.targets[index], dict(self.meta))

    def split(self, n_test: int, seed: int) -> tuple[JetDataset, JetDataset]:
        """``(train, test)``: a random ``n_test`` samples for testing, the rest for training.

        The permutation comes from ``torch.Generator().manual_seed(seed)``: the same seed gives
        the same split.
        """
        check_int("n_test", n_test, minimum=0, maximum=len(self))
        check_int("seed", seed, minimum=0)
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
        return self.subset(train), self.subset(test)

    def to(self, *args, **kwargs) -> JetDataset:
        """Move or cast every array, as :meth:`torch.Tensor.to`."""
        return JetDataset(self.points.to(*args, **kwargs), self.inputs.to(*args, **kwargs), self.targets.to(*args, **kwargs), dict(self.meta))


def generate_jets(
    manifold: Manifold,
    n: int,
    *,
    seed: int = 0,
    order: int = 2,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float64,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> JetDataset:
    """Draw ``n`` points with ``seed`` and compute their jets in batches, with a progress bar.

    Jets are computed in ``compute_dtype`` (default float64) and stored in ``dtype``
    (default float32, relative error ~1e-7 on the stored jets), on ``device`` (default CPU).
    """
    from tqdm.auto import tqdm

    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("order", order, minimum=0, maximum=2)
    check_int("batch_size", batch_size, minimum=1)
    dtype_name("dtype", dtype)
    dtype_name("compute_dtype", compute_dtype)
    points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=compute_dtype, device=device)
    parts_in: list[list[torch.Tensor]] = []
    parts_out: list[list[torch.Tensor]] = []
    with tqdm(total=n, desc=f"jets of {type(manifold).__name__}", unit="sample", disable=not progress, leave=False) as bar:
        for chunk in points.split(batch_size):
            x, y = manifold.jets(chunk, order)
            parts_in.append([c.to(dtype) for c in x.components()])
            parts_out.append([c.to(dtype) for c in y.components()])
            bar.update(len(chunk))
    inputs = Jet(*(torch.cat(c) for c in zip(*parts_in)))
    targets = Jet(*(torch.cat(c) for c in zip(*parts_out)))
    meta = {
        **_provenance(manifold, n, seed, order, dtype, compute_dtype),
        "fingerprint": fingerprint(manifold, n, seed, order, dtype, compute_dtype),
    }
    return JetDataset(points.to(dtype), inputs, targets, meta)


def is_jet_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a jet cache (its ``meta.json`` says so)."""
    meta = Path(path) / "meta.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_cache_target(path: str | os.PathLike, *, force: bool = False, argument: str = "path") -> Path:
    """Check, before any work, that a jet cache may be written at ``path``; returns it (absolute).

    Accepted: a path that does not exist, an empty folder, or a jet cache (replaced). A
    regular file, or a folder of other files, is refused naming ``argument`` (the folder
    also with ``force``: it would be replaced whole, and its files lost).
    """
    from manifoldtrain._io import check_writable

    target = Path(os.path.abspath(path))
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{argument}: {path} is a file, not a jet cache; choose a new folder name")
    if target.is_dir() and any(target.iterdir()) and not is_jet_cache(target):
        raise FileExistsError(
            f"{argument}: {path} is a folder of other files, not a jet cache, and would be replaced whole; "
            "choose a new folder name"
        )
    if target == Path.cwd() and target.is_dir():
        raise FileExistsError(f"{argument}: {path} is the current folder; write the cache into a folder of its own")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    check_writable(parent, argument)
    return target


def save_jets(dataset: JetDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a cache directory at ``path`` (atomically: complete or absent).

    ``path`` must not exist, or be an empty folder or a jet cache, which is replaced
    (:func:`check_cache_target`); anything else is refused, nothing is deleted. Files and
    folders get the permissions of the user's umask.
    """
    from manifoldtrain._io import _publish_mode

    path = check_cache_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        arrays = {"points": dataset.points}
        for prefix, jet in (("input", dataset.inputs), ("target", dataset.targets)):
            for name, comp in zip(_COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = comp
        for name, t in arrays.items():
            np.save(tmp / f"{name}.npy", t.detach().cpu().numpy())
            _publish_mode(tmp / f"{name}.npy")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **dataset.meta}
        meta["shapes"] = {name: list(t.shape) for name, t in arrays.items()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _publish_mode(tmp / "meta.json")
        _publish_mode(tmp, directory=True)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / "data")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "data", path)  # the old cache goes back where it was
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_jets(path: str | os.PathLike, *, expected_fingerprint: str | None = None) -> JetDataset:
    """Load a cache directory written by :func:`save_jets`.

    Raises
    ------
    FileNotFoundError
        ``path`` or its ``meta.json`` does not exist (e.g. a generation that never finished).
    ValueError
        Not a manifoldtrain jet cache, an unknown version, missing, misshapen, truncated or
        otherwise damaged files (each named, with the remedy: regenerate the cache with
        ``manifoldtrain generate``), or a fingerprint other than ``expected_fingerprint``.
    """
    path = Path(path)
    meta_file = path / "meta.json"
    remedy = f"regenerate the cache with `manifoldtrain generate` (or delete {path} to have it generated again)"
    if not meta_file.is_file():
        raise FileNotFoundError(f"path: no complete jet cache at {path} (missing {meta_file.name})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"path: {meta_file} is not valid JSON ({err}); the cache is damaged: {remedy}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"path: {path} is not a {FORMAT} cache of version {FORMAT_VERSION}")
    if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"path: the cache at {path} was made with other settings (fingerprint differs)")
    shapes, order = meta.get("shapes"), meta.get("order")
    wanted = ["points"] + [f"{prefix}_{c}" for prefix in ("input", "target") for c in _COMPONENTS[: (order or 0) + 1]]
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
    inputs = Jet(*(arrays[f"input_{c}"] for c in _COMPONENTS[: order + 1]))
    targets = Jet(*(arrays[f"target_{c}"] for c in _COMPONENTS[: order + 1]))
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
    key = fingerprint(manifold, n, seed, order, dtype, compute_dtype)
    path = Path(cache_dir) / key
    if (path / "meta.json").is_file():
        return load_jets(path, expected_fingerprint=key)
    data = generate_jets(manifold, n, seed=seed, order=order, dtype=dtype, compute_dtype=compute_dtype, progress=progress)
    save_jets(data, path)
    return data


def check_dataset(name: str, data: object, *, order: int | None = None) -> JetDataset:
    """Check that ``data`` is a :class:`JetDataset` (of at least ``order``)."""
    if not isinstance(data, JetDataset):
        raise TypeError(f"{name}: expected a JetDataset, got {type(data).__name__}")
    if order is not None and data.order < order:
        raise ValueError(f"{name}: expected jets of order >= {order}, got order {data.order}")
    check_tensor(f"{name}.points", data.points, finite=False)
    return data
