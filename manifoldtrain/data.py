"""Jets of a manifold as a data set: generation, on-disk caches, splits.

Two cache formats are read everywhere (:func:`load_jets`, :class:`JetCache`); both are a
directory whose ``meta.json`` says which it is.

Single-file caches
------------------
Written by :func:`save_jets`:

* ``meta.json``: ``{"format": "manifoldtrain-jets", "version": 1, "fingerprint": ...,
  "manifold": {"class": ..., "settings": {...}}, "n", "seed", "order", "dtype",
  "compute_dtype", "shapes": {name: [...]}}``;
* one ``.npy`` file per array: ``points``, ``input_value``, ``input_d1``, ``input_d2``,
  ``target_value``, ``target_d1``, ``target_d2`` (those up to ``order``), shapes as in
  :mod:`manifoldtrain.jet`.

It is written into a temporary directory beside its final place and renamed into place when
complete, so an interrupted write never leaves a directory that loads as complete.

Sharded caches
--------------
For data larger than memory; written by :func:`generate_shards` (``manifoldtrain generate``)
and :func:`save_shards`. The same arrays, cut into shards of ``shard_size`` consecutive
samples:

* ``meta.json``: the provenance above (``fingerprint``, ``manifold``, ``n``, ``seed``,
  ``order``, ``dtype``, ``compute_dtype``) and ``"format": "manifoldtrain-jet-shards"``,
  ``"version": 1``, ``"rows"`` (samples held), ``"shard_size"``, ``"n_shards"``,
  ``"arrays": {name: shape of one sample}`` and ``"complete": true``;
* ``shard-00000/``, ``shard-00001/``, ...: shard ``k`` holds samples
  ``k * shard_size`` up to ``min((k + 1) * shard_size, rows)``: one ``.npy`` file per array,
  ``[rows_k, *shape]``, and ``shard.json`` (``index``, ``start``, ``rows``, ``fingerprint``).

Each shard is written into a temporary folder (``.shard-00000.tmp-*``), its files flushed to
disk, then renamed into place: a shard folder under its final name is complete, and an
interrupted shard never reads as complete. A generation in progress lives beside its target,
in ``.NAME.partial/`` (with ``"complete": false``), and is renamed to ``NAME`` once every
shard is there; running the same generation again continues it, keeping the finished shards
(:func:`generate_shards`). Readers (:class:`JetCache`) check every file's header and size
when they open a cache (a truncated file is named in the error) and read only the rows
asked for, with positional reads into the output: nothing maps or loads the whole set.

The *fingerprint* is a SHA-256 of canonical JSON of the manifold's class and settings (its
attrs fields, or its public attributes; tensor-valued settings by a hash of their content),
``n``, ``seed``, ``order`` and the dtypes: a cache is reused only when all of them match. It
identifies the data, not the layout: a sharded and a single-file cache of the same
generation have the same fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import attrs
import numpy as np
import torch

from manifoldtrain._plain import digest, plain
from manifoldtrain._validation import check_int, check_tensor, dtype_name, first_non_finite, non_finite_sample
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

__all__ = ["JetDataset", "generate_jets", "load_jets", "save_jets", "cached_jets", "fingerprint", "is_jet_cache",
           "check_cache_target", "JetCache", "generate_shards", "save_shards", "ShardReport", "DEFAULT_SHARD_SIZE"]

FORMAT = "manifoldtrain-jets"
FORMAT_VERSION = 1
_COMPONENTS = ("value", "d1", "d2")


def _check_finite_points(points: torch.Tensor, what: str, *, first: int = 0) -> None:
    """Refuse points holding NaN or infinite values before they are stored (as the jets)."""
    bad = first_non_finite(points)
    if bad is not None:
        raise ValueError(f"{what} point {first + bad} holding NaN or infinite values; a jet cache stores finite "
                         "points and jets only")


def _check_finite_jets(inputs: Jet, targets: Jet, what: str, *, first: int = 0, points: torch.Tensor | None = None) -> None:
    """Refuse jets that hold NaN or infinite values before they are stored (a cache holds
    finite points and jets only, so that a non-finite value read back means a damaged file)."""
    for prefix, jet in (("input", inputs), ("target", targets)):
        found = non_finite_sample(jet)
        if found is not None:
            name, bad = found
            at = "" if points is None else f" (point {[round(v, 6) for v in points[bad].reshape(-1).tolist()]})"
            raise ValueError(f"{what} the {prefix} {name} of sample {first + bad}{at} holds NaN or infinite values; "
                             "a jet cache stores finite values only")


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
    check_is_manifold("manifold", manifold)
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
    Jets holding NaN or infinite values (in ``dtype``) are refused with a ValueError naming
    the sample and its point.
    """
    from tqdm.auto import tqdm

    check_is_manifold("manifold", manifold)
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("order", order, minimum=0, maximum=2)
    check_int("batch_size", batch_size, minimum=1)
    dtype_name("dtype", dtype)
    dtype_name("compute_dtype", compute_dtype)
    points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=compute_dtype, device=device)
    _check_finite_points(points.to(dtype), f"{type(manifold).__name__}.sample gave")
    parts_in: list[list[torch.Tensor]] = []
    parts_out: list[list[torch.Tensor]] = []
    with tqdm(total=n, desc=f"jets of {type(manifold).__name__}", unit="sample", disable=not progress, leave=False) as bar:
        for k, chunk in enumerate(points.split(batch_size)):
            x, y = manifold.jets(chunk, order)
            parts_in.append([c.to(dtype) for c in x.components()])
            parts_out.append([c.to(dtype) for c in y.components()])
            _check_finite_jets(Jet(*parts_in[-1]), Jet(*parts_out[-1]), f"{type(manifold).__name__}.jets gave",
                               first=k * batch_size, points=chunk)
            bar.update(len(chunk))
    inputs = Jet(*(torch.cat(c) for c in zip(*parts_in)))
    targets = Jet(*(torch.cat(c) for c in zip(*parts_out)))
    meta = {
        **_provenance(manifold, n, seed, order, dtype, compute_dtype),
        "fingerprint": fingerprint(manifold, n, seed, order, dtype, compute_dtype),
    }
    return JetDataset(points.to(dtype), inputs, targets, meta)


def is_jet_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a jet cache of either format (its ``meta.json`` says so)."""
    meta = Path(path) / "meta.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("format") in (FORMAT, SHARDS_FORMAT)
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
    folders get the permissions of the user's umask. Jets holding NaN or infinite values are
    refused (a cache holds finite values only), naming the sample; so are such points.
    """
    from manifoldtrain._io import _publish_mode

    _check_finite_points(dataset.points, "dataset: has")
    _check_finite_jets(dataset.inputs, dataset.targets, "dataset:")
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
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete folder ``tmp`` to ``path``, replacing a cache there (which goes
    back where it was if the rename fails)."""
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


def load_jets(path: str | os.PathLike, *, expected_fingerprint: str | None = None) -> JetDataset:
    """Load a cache directory into memory: one written by :func:`save_jets`, or a sharded one
    (``manifoldtrain generate``, :func:`generate_shards`), whose shards are concatenated.

    For a sharded cache larger than memory, read only what is needed with :class:`JetCache`
    (or train from it with :class:`~manifoldtrain.sources.ShardedCacheSource`).

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
    meta, remedy = _read_meta(path)
    if meta.get("format") == SHARDS_FORMAT:
        with JetCache(path, expected_fingerprint=expected_fingerprint) as cache:
            return cache.load()
    meta_file = path / "meta.json"
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
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
        bad = first_non_finite(arrays[name])
        if bad is not None:
            raise _non_finite_in(file, bad, bad, remedy)
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
    check_is_manifold("manifold", manifold)
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


# ============================================================================ sharded caches

SHARDS_FORMAT = "manifoldtrain-jet-shards"
SHARDS_VERSION = 1
#: Samples per shard written by :func:`generate_shards` unless told otherwise (order-2 cube
#: jets: about 190 MB per shard in float32).
DEFAULT_SHARD_SIZE = 1024
#: The file in every shard folder that says which shard it is.
SHARD_META = "shard.json"
#: Files a :class:`JetCache` keeps open at once (the least recently read are closed first).
_MAX_OPEN_FILES = 64
#: The keys of a sharded cache's ``meta.json`` that describe its layout, not its data.
_LAYOUT_KEYS = ("format", "version", "shapes", "rows", "shard_size", "n_shards", "arrays", "complete")


def _array_names(order: int) -> list[str]:
    return ["points"] + [f"{prefix}_{c}" for prefix in ("input", "target") for c in _COMPONENTS[: order + 1]]


def shard_name(index: int) -> str:
    """The folder name of shard ``index`` in a sharded cache: ``shard-00000``, ``shard-00001``, ..."""
    return f"shard-{index:05d}"


def _partial_path(target: Path) -> Path:
    """Where an unfinished generation of ``target`` lives: ``.NAME.partial`` beside it."""
    return target.parent / f".{target.name}.partial"


def _remedy(path: Path) -> str:
    return (f"write the cache again (`manifoldtrain generate`, or save_jets; a cache in a data.cache_dir: delete "
            f"{path} and the next run computes it anew)")


def _shards_remedy(path: Path) -> str:
    return (f"run the `manifoldtrain generate` command that wrote it again: it keeps the intact shards and redoes "
            f"the others (or delete {path} and generate it anew)")


def _shard_remedy(folder: Path) -> str:
    """The remedy for one damaged shard that the opening checks cannot see (so a generation
    continued over it would keep it)."""
    return (f"delete {folder} and rerun what wrote the cache (the `manifoldtrain generate` command, or a run with "
            f"data.cache_dir): it computes that shard anew and keeps the others")


def _non_finite_in(file: Path, row: int, sample: int, remedy: str, name: str = "path") -> ValueError:
    """The error for a cache file holding a NaN or an infinity (caches are written with finite
    values only: the file changed since)."""
    return ValueError(f"{name}: {file} holds NaN or infinite values in row {row} (sample {sample} of the cache); caches "
                      f"are written with finite values only, so the file is damaged: {remedy}")


def _renamed(err: Exception, argument: str, name: str = "path") -> Exception:
    """An error naming ``name`` (``path: ...``: :func:`load_jets`, :class:`JetCache`) as the
    caller's ``argument``'s."""
    message = str(err)
    return type(err)(f"{argument}: {message.removeprefix(f'{name}: ')}")


def _read_meta(path: Path) -> tuple[dict, str]:
    """``(meta.json's contents, the remedy to quote)`` of a cache folder; errors as :func:`load_jets`."""
    meta_file = path / "meta.json"
    remedy = _remedy(path)
    if not meta_file.is_file():
        partial = "" if not _partial_path(Path(os.path.abspath(path))).is_dir() else (
            f"; an unfinished generation is in {_partial_path(Path(os.path.abspath(path))).name} beside it: run the "
            "same `manifoldtrain generate` command again to finish it")
        if not partial and not path.exists():
            raise FileNotFoundError(f"path: no jet cache at {path}: there is no such file or folder; pass a folder "
                                    "written by `manifoldtrain generate`")
        inside = sorted(p.name for p in path.iterdir() if (p / "meta.json").is_file()) if path.is_dir() else []
        if inside:  # a data.cache_dir: one cache per fingerprint, in subfolders
            shown = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
            partial += (f"; it holds {len(inside)} jet cache{'s' if len(inside) > 1 else ''} in subfolders ({shown}), "
                        f"as a data.cache_dir does: pass one of them, e.g. {path / inside[0]}")
        raise FileNotFoundError(f"path: no complete jet cache at {path} (missing {meta_file.name}){partial}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"path: {meta_file} is not valid JSON ({err}); the cache is damaged: {remedy}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"path: {path} is not a {FORMAT} cache of version {FORMAT_VERSION}")
    return meta, remedy


@attrs.frozen
class _NpyFile:
    """Where the rows of one ``.npy`` file are: ``offset`` bytes in, ``row_bytes`` each."""

    path: Path
    offset: int
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


def _npy_layout(file: Path) -> _NpyFile:
    """Parse the header of a ``.npy`` file and check that its size holds every row.

    Raises ``ValueError`` saying what is wrong (without the remedy), ``FileNotFoundError`` if absent.
    """
    from numpy.lib import format as npy

    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing")
    try:
        with open(file, "rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, EOFError, OSError, SyntaxError) as err:  # a cut or garbled header
        raise ValueError(f"{file} is truncated or damaged ({err})") from None
    if fortran or len(shape) < 1:
        raise ValueError(f"{file} is not a C-ordered array of samples (shape {list(shape)})")
    if dtype not in (np.dtype("<f4"), np.dtype("<f8")) or not dtype.isnative:
        raise ValueError(f"{file} holds {dtype}, expected float32 or float64")
    layout = _NpyFile(file, offset, int(shape[0]), tuple(int(s) for s in shape[1:]), dtype)
    want = offset + layout.rows * layout.row_bytes
    size = file.stat().st_size
    if size < want:
        raise ValueError(f"{file} is truncated: {size} bytes, expected {want} for shape {list(shape)}")
    return layout


def _check_shard(folder: Path, index: int, start: int, rows: int, fp: str | None, arrays: dict,
                 dtype: np.dtype) -> tuple[str | None, dict[str, _NpyFile]]:
    """Whether shard ``index`` in ``folder`` is complete and intact: ``(None, its files)``, or
    ``(what is wrong, {})``."""
    if not folder.is_dir():
        return f"{folder} is missing", {}
    meta_file = folder / SHARD_META
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return f"{meta_file} is missing", {}
    except (OSError, ValueError) as err:
        return f"{meta_file} is damaged ({err})", {}
    want = {"index": index, "start": start, "rows": rows, "fingerprint": fp}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        got = {k: meta.get(k) for k in want} if isinstance(meta, dict) else meta
        return f"{meta_file} describes another shard ({got}, expected {want})", {}
    files = {}
    for name, shape in arrays.items():
        try:
            layout = _npy_layout(folder / f"{name}.npy")
        except (FileNotFoundError, ValueError) as err:
            return str(err), {}
        if layout.rows != rows or list(layout.row_shape) != list(shape):
            return (f"{layout.path} has shape {[layout.rows, *layout.row_shape]}, expected {[rows, *shape]}"), {}
        if layout.dtype != dtype:
            return f"{layout.path} holds {layout.dtype}, expected {dtype}", {}
        files[name] = layout
    return None, files


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Read ``len(buffer)`` bytes at ``offset`` of ``fd`` into ``buffer``; returns the bytes read."""
    done = 0
    total = len(buffer)
    while done < total:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [buffer[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            chunk = os.pread(fd, total - done, offset + done)
            buffer[done:done + len(chunk)] = chunk
            got = len(chunk)
        if got == 0:
            break
        done += got
    return done


class JetCache:
    """A jet cache on disk (either format), opened to read the rows asked for, never the whole set.

    Opening checks ``meta.json``, that a sharded cache is complete, and every file's header,
    shape, dtype and size (a truncated file is named, with the remedy). :meth:`read` gathers
    rows with positional reads straight into the output tensor (consecutive rows in one
    read), and checks that they are finite (caches are written with finite values only, so a NaN
    or an infinity means a damaged file, named with its row and the remedy): memory holds
    the rows asked for and nothing else, and the operating system's page
    cache, not the process, keeps recently read data. Safe to use from one thread at a time
    per call (a lock guards the open files); picklable (files are reopened where it lands).
    The folder is its attribute ``path`` (a ``Path``).

    Parameters
    ----------
    path : path
        The cache folder.
    expected_fingerprint : str, optional
        Refuse a cache of another fingerprint.
    name : str
        What the errors of later reads call the cache (default ``"path"``; e.g. the config
        field or command-line option it came from).

    Attributes
    ----------
    meta : dict
        The cache's provenance (as :func:`load_jets` gives it: ``fingerprint``, ``manifold``,
        ``n``, ``seed``, ``order``, ``dtype``, ``compute_dtype``).
    order : int
        The jet order held.
    dtype : torch.dtype
        The storage dtype.
    shapes : dict
        The shape of one sample of each array (``points``, ``input_value``, ...).
    """

    def __init__(self, path: str | os.PathLike, *, expected_fingerprint: str | None = None, name: str = "path"):
        self.path = Path(path)
        self.name = name
        meta, remedy = _read_meta(self.path)
        fmt = meta.get("format")
        if expected_fingerprint is not None and fmt in (FORMAT, SHARDS_FORMAT) and (
                meta.get("fingerprint") != expected_fingerprint):
            raise ValueError(f"path: the cache at {path} was made with other settings (fingerprint differs)")
        order = meta.get("order")
        if fmt == FORMAT and meta.get("version") == FORMAT_VERSION:
            shapes = meta.get("shapes")
            if not isinstance(shapes, dict) or order not in (0, 1, 2) or any(
                    not isinstance(shapes.get(name), list) or not shapes[name] for name in _array_names(order)):
                raise ValueError(f"path: {self.path / 'meta.json'} lacks the order or the array shapes, or they are "
                                 f"malformed; {remedy}")
            rows = shapes["points"][0]
            arrays = {name: shapes[name][1:] for name in _array_names(order)}
            folders = [self.path]
            starts = [0]
            counts = [rows]
        elif fmt == SHARDS_FORMAT and meta.get("version") == SHARDS_VERSION:
            remedy = _shards_remedy(self.path)
            arrays, rows, size, count = (meta.get(k) for k in ("arrays", "rows", "shard_size", "n_shards"))
            if (order not in (0, 1, 2) or not isinstance(arrays, dict) or not isinstance(rows, int)
                    or not isinstance(size, int) or size < 1 or count != math.ceil(rows / size)
                    or any(not isinstance(arrays.get(name), list) for name in _array_names(order))):
                raise ValueError(f"path: {self.path / 'meta.json'} lacks the layout of the shards, or it is "
                                 f"malformed; {remedy}")
            if meta.get("complete") is not True:
                raise ValueError(f"path: the sharded cache at {path} is unfinished; run the `manifoldtrain generate` "
                                 "command that writes it again to finish it")
            arrays = {name: arrays[name] for name in _array_names(order)}
            folders = [self.path / shard_name(k) for k in range(count)]
            starts = [k * size for k in range(count)]
            counts = [min(size, rows - k * size) for k in range(count)]
        else:
            raise ValueError(f"path: {path} is not a {FORMAT} cache of version {FORMAT_VERSION} nor a "
                             f"{SHARDS_FORMAT} cache of version {SHARDS_VERSION}")
        self.order = order
        self._sharded = fmt == SHARDS_FORMAT
        self.shapes = {name: tuple(shape) for name, shape in arrays.items()}
        self._files: dict[str, list[_NpyFile]] = {name: [] for name in arrays}
        np_dtype = None
        for k, (folder, start, n) in enumerate(zip(folders, starts, counts)):
            if fmt == SHARDS_FORMAT:
                if np_dtype is None:
                    np_dtype = _npy_layout_or_error(folder / "points.npy", remedy).dtype
                problem, files = _check_shard(folder, k, start, n, meta.get("fingerprint"), arrays, np_dtype)
                if problem is not None:
                    raise ValueError(f"path: shard {k} of the cache at {path} is damaged or incomplete: {problem}; "
                                     f"{remedy}")
            else:
                files = {}
                for name, shape in arrays.items():
                    layout = _npy_layout_or_error(folder / f"{name}.npy", remedy)
                    if layout.rows != n or list(layout.row_shape) != list(shape):
                        raise ValueError(f"path: {layout.path} has shape {[layout.rows, *layout.row_shape]}, meta.json "
                                         f"says {[n, *shape]}; {remedy}")
                    files[name] = layout
            for name in arrays:
                self._files[name].append(files[name])
        dtypes = {f.dtype for files in self._files.values() for f in files}
        if len(dtypes) != 1:
            raise ValueError(f"path: the arrays of the cache at {path} mix dtypes {sorted(map(str, dtypes))}; {remedy}")
        self.dtype = torch.float32 if dtypes.pop() == np.dtype("<f4") else torch.float64
        self._starts = np.asarray(starts, dtype=np.int64)
        self._rows = int(sum(counts))
        self._remedy = remedy
        self.meta = {k: v for k, v in meta.items() if k not in _LAYOUT_KEYS}
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what it holds

    def __len__(self) -> int:
        return self._rows

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the generation that wrote it (None for a cache saved without one)."""
        return self.meta.get("fingerprint")

    @property
    def n_shards(self) -> int:
        """How many shards it has (1 for a single-file cache)."""
        return len(self._starts)

    def __repr__(self) -> str:
        return f"JetCache({str(self.path)!r}, {len(self)} samples of order {self.order}, {self.n_shards} shard(s))"

    # ------------------------------------------------------------------ reading rows

    def _fd(self, path: Path) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            while len(self._fds) >= _MAX_OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd  # most recently used last
        return fd

    def _index(self, indices) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            if indices.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
                raise TypeError(f"indices: expected integer sample indices, got a {indices.dtype} tensor")
            idx = indices.detach().cpu().reshape(-1).numpy().astype(np.int64, copy=False)
        else:
            idx = np.asarray(indices).reshape(-1)
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(f"indices: expected integer sample indices, got {idx.dtype}")
            idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise IndexError(f"indices: expected sample indices in [0, {len(self)}), got {bad}")
        return idx

    def read(self, name: str, indices, *, pin_memory: bool = False) -> torch.Tensor:
        """The rows ``indices`` of array ``name`` (``points``, ``input_value``, ``input_d1``, ...).

        Parameters
        ----------
        name : str
            An array the cache holds (see :attr:`shapes`).
        indices : Tensor or array of int
            ``[b]`` sample indices in ``[0, len(self))``, in any order, repeats allowed.
        pin_memory : bool
            Read into page-locked memory (for fast, asynchronous copies to a GPU).

        Returns
        -------
        Tensor
            ``[b, *shapes[name]]`` in :attr:`dtype`, on the CPU.
        """
        if name not in self._files:
            raise KeyError(f"name: the cache holds {sorted(self._files)}, not {name!r}")
        idx = self._index(indices)
        files = self._files[name]
        shape = self.shapes[name]
        out = torch.empty((len(idx), *shape), dtype=self.dtype, pin_memory=pin_memory)
        if not len(idx):
            return out
        row_bytes = files[0].row_bytes
        flat = memoryview(out.numpy()).cast("B")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        shard_of = np.searchsorted(self._starts, ordered, side="right") - 1
        # Runs of consecutive rows of one shard, each read at once.
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shard_of) != 0)) + 1
        bounds = np.concatenate([[0], breaks, [len(ordered)]])
        with self._lock:
            for a, b in zip(bounds[:-1], bounds[1:]):
                k = int(shard_of[a])
                layout = files[k]
                offset = layout.offset + int(ordered[a] - self._starts[k]) * row_bytes
                positions = order[a:b]
                count = b - a
                contiguous = count == 1 or bool((np.diff(positions) == 1).all())
                if contiguous:
                    p = int(positions[0])
                    target = flat[p * row_bytes:(p + count) * row_bytes]
                else:
                    scratch = np.empty(count * row_bytes, dtype=np.uint8)
                    target = memoryview(scratch)
                got = _pread_into(self._fd(layout.path), target, offset)
                if got != len(target):
                    raise ValueError(f"{self.name}: {layout.path} is truncated: it ended {len(target) - got} bytes "
                                     f"short of row {int(ordered[a] - self._starts[k]) + count - 1}; {self._remedy}")
                if not contiguous:
                    rows_view = out.numpy().reshape(len(idx), -1).view(np.uint8)
                    rows_view[positions] = scratch.reshape(count, row_bytes)
        bad = first_non_finite(out)
        if bad is not None:
            sample = int(idx[bad])
            k = int(np.searchsorted(self._starts, sample, side="right") - 1)
            remedy = _shard_remedy(files[k].path.parent) if self._sharded else self._remedy
            raise _non_finite_in(files[k].path, sample - int(self._starts[k]), sample, remedy, self.name)
        return out

    def jets(self, indices, order: int | None = None, *, pin_memory: bool = False) -> tuple[Jet, Jet]:
        """``(inputs, targets)`` at ``indices``, up to ``order`` (default: :attr:`order`), read as :meth:`read`."""
        order = self.order if order is None else check_int("order", order, minimum=0, maximum=self.order)
        idx = self._index(indices)
        parts = {name: self.read(name, idx, pin_memory=pin_memory) for name in _array_names(order) if name != "points"}
        inputs = Jet(*(parts[f"input_{c}"] for c in _COMPONENTS[: order + 1]))
        targets = Jet(*(parts[f"target_{c}"] for c in _COMPONENTS[: order + 1]))
        return inputs, targets

    def points(self, indices) -> torch.Tensor:
        """The points at ``indices``, ``[b, *point_shape]``."""
        return self.read("points", indices)

    def load(self, indices=None, *, order: int | None = None) -> JetDataset:
        """The samples at ``indices`` (default: all) up to ``order``, in memory, as a :class:`JetDataset`."""
        idx = np.arange(len(self)) if indices is None else self._index(indices)
        inputs, targets = self.jets(idx, order)
        return JetDataset(self.points(idx), inputs, targets, dict(self.meta))

    # ------------------------------------------------------------------ files

    def close(self) -> None:
        """Close the open files (reading again reopens them)."""
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __enter__(self) -> JetCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _npy_layout_or_error(file: Path, remedy: str) -> _NpyFile:
    try:
        return _npy_layout(file)
    except FileNotFoundError:
        raise ValueError(f"path: the cache at {file.parent} lacks {file.name}; {remedy}") from None
    except ValueError as err:
        raise ValueError(f"path: {err}; {remedy}") from None


# ---------------------------------------------------------------------------- writing shards


class _ShardWriter:
    """Streams the arrays of one shard into ``.npy`` files in a temporary folder inside
    ``folder``; :meth:`commit` flushes them to disk and renames the folder to its shard name."""

    def __init__(self, folder: Path, index: int, start: int, rows: int, arrays: dict[str, tuple], dtype: np.dtype):
        from numpy.lib import format as npy

        self.folder, self.index, self.start, self.rows = folder, index, start, rows
        self.tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{shard_name(index)}.tmp-"))
        self.written = {name: 0 for name in arrays}
        self.files = {}
        try:
            for name, shape in arrays.items():
                f = open(self.tmp / f"{name}.npy", "wb")  # noqa: SIM115 - closed in commit / abort
                self.files[name] = f
                header = {"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, *shape)}
                npy.write_array_header_1_0(f, header)
        except BaseException:
            self.abort()
            raise
        self.dtype = dtype

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
            self.files[name].write(memoryview(arr).cast("B"))
            self.written[name] += len(arr)

    def commit(self, fp: str | None) -> Path:
        from manifoldtrain._io import _publish_mode

        try:
            if any(n != self.rows for n in self.written.values()):
                raise RuntimeError(f"shard {self.index}: wrote {self.written} rows, expected {self.rows} of each")
            for name, f in self.files.items():
                f.flush()
                os.fsync(f.fileno())
                f.close()
                _publish_mode(self.tmp / f"{name}.npy")
            meta = {"format": SHARDS_FORMAT, "index": self.index, "start": self.start, "rows": self.rows,
                    "fingerprint": fp}
            with open(self.tmp / SHARD_META, "w") as f:
                f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _publish_mode(self.tmp / SHARD_META)
            _publish_mode(self.tmp, directory=True)
            _fsync_dir(self.tmp)
            final = self.folder / shard_name(self.index)
            os.rename(self.tmp, final)  # complete, or not there at all
            _fsync_dir(self.folder)
            return final
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make a folder's entries durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _shard_bounds(rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, rows)) for start in range(0, rows, shard_size)]


def _write_meta(folder: Path, meta: dict) -> None:
    from manifoldtrain._io import write_text_atomic

    write_text_atomic(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _sharded_meta(provenance: dict, rows: int, order: int, shard_size: int, arrays: dict, complete: bool) -> dict:
    return {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, **provenance, "order": order, "rows": rows,
            "shard_size": shard_size, "n_shards": math.ceil(rows / shard_size),
            "arrays": {name: list(shape) for name, shape in arrays.items()}, "complete": complete}


def save_shards(dataset: JetDataset, path: str | os.PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE) -> Path:
    """Write ``dataset`` as a sharded cache at ``path`` (atomically: complete or absent).

    The same checks as :func:`save_jets` (``path`` new, an empty folder, or a jet cache, which
    is replaced). E.g. to turn a single-file cache into a sharded one:
    ``save_shards(load_jets(old), new)``. Returns ``path``.
    """
    from manifoldtrain._io import _publish_mode

    if not isinstance(dataset, JetDataset):
        raise TypeError(f"dataset: expected a JetDataset, got {type(dataset).__name__}")
    check_int("shard_size", shard_size, minimum=1)
    _check_finite_points(dataset.points, "dataset: has")
    _check_finite_jets(dataset.inputs, dataset.targets, "dataset:")
    path = check_cache_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        arrays = {"points": dataset.points}
        for prefix, jet in (("input", dataset.inputs), ("target", dataset.targets)):
            for name, comp in zip(_COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = comp.detach().cpu()
        dtype = np.dtype("<f4") if dataset.inputs.dtype == torch.float32 else np.dtype("<f8")
        shapes = {name: tuple(t.shape[1:]) for name, t in arrays.items()}
        for k, (a, b) in enumerate(_shard_bounds(len(dataset), shard_size)):
            writer = _ShardWriter(tmp, k, a, b - a, shapes, dtype)
            writer.write({name: t[a:b].to(dataset.inputs.dtype).numpy() for name, t in arrays.items()})
            writer.commit(dataset.meta.get("fingerprint"))
        provenance = {k: v for k, v in dataset.meta.items() if k not in _LAYOUT_KEYS}
        _write_meta(tmp, _sharded_meta(provenance, len(dataset), dataset.order, shard_size, shapes, True))
        _publish_mode(tmp, directory=True)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@attrs.frozen
class ShardReport:
    """What :func:`generate_shards` did: ``path`` (the complete cache), ``fingerprint``, ``n``
    (samples), ``n_shards``, ``written`` (the shards this call computed) and ``kept`` (those
    found complete and intact, from an interrupted earlier call, and kept)."""

    path: Path
    fingerprint: str
    n: int
    n_shards: int
    written: tuple[int, ...]
    kept: tuple[int, ...]


def _render_shard(manifold: Manifold, points: torch.Tensor, index: int, start: int, folder: str, order: int,
                  dtype: torch.dtype, batch_size: int, fp: str, arrays: dict, device, progress=None) -> int:
    """Compute the jets of ``points`` (shard ``index``) chunk by chunk and write them as a
    shard of ``folder``; returns ``index``. Runs in a worker process, or in the caller's."""
    np_dtype = np.dtype("<f4") if dtype == torch.float32 else np.dtype("<f8")
    writer = _ShardWriter(Path(folder), index, start, len(points), arrays, np_dtype)
    try:
        writer.write({"points": points.to(dtype).cpu().numpy()})
        for k, chunk in enumerate(points.to(device).split(batch_size)):
            x, y = (jet.to(dtype=dtype) for jet in manifold.jets(chunk, order))  # as stored, checked
            _check_finite_jets(x, y, f"{type(manifold).__name__}.jets gave", first=start + k * batch_size, points=chunk)
            parts = {}
            for prefix, jet in (("input", x), ("target", y)):
                for name, comp in zip(_COMPONENTS, jet.components()):
                    parts[f"{prefix}_{name}"] = comp.detach().cpu().numpy()
            writer.write(parts)
            if progress is not None:
                progress(len(chunk))
    except BaseException:
        writer.abort()
        raise
    writer.commit(fp)
    return index


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def generate_shards(
    manifold: Manifold,
    n: int,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    order: int = 2,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ShardReport:
    """Generate the jets of :func:`generate_jets` (the same points and values) as a sharded
    cache at ``path``, in ``workers`` processes; continue an interrupted generation.

    The points are drawn as :func:`generate_jets` draws them; shard ``k`` holds samples
    ``k * shard_size`` up to ``(k + 1) * shard_size`` (with ``shard_size`` a multiple of
    ``batch_size`` the jets are computed in the same chunks, and equal
    :func:`generate_jets`'s exactly). Each shard is written to a temporary folder and renamed
    into place when complete; the cache is built in ``.NAME.partial`` beside ``path`` and
    renamed to ``path`` (replacing a cache there) once every shard is complete.

    Stopped at any moment (ctrl-C, a killed process, a full disk), the same call continues:
    the finished shards of ``.NAME.partial`` are checked (headers and sizes) and kept, and
    only the missing or damaged ones are computed; leftovers of interrupted shards are
    removed. A partial generation of other settings (another fingerprint or shard size) is
    discarded. Called on a complete cache of the same fingerprint, it checks every shard
    and redoes only damaged ones (nothing, if all are intact).

    Parameters
    ----------
    manifold : Manifold
        Pickled to the workers (with ``workers > 1``), which import its class.
    n, seed, order, dtype, compute_dtype, batch_size, device, progress
        As :func:`generate_jets`.
    path : path
        The cache folder: new, an empty folder, or a jet cache (see :func:`check_cache_target`).
    shard_size : int
        Samples per shard (default :data:`DEFAULT_SHARD_SIZE`).
    workers : int
        Processes computing shards in parallel (default 1: in this process). Workers are
        started with the ``spawn`` method and share the CPU threads
        (``torch.get_num_threads() // workers`` each).

    Returns
    -------
    ShardReport
    """
    from tqdm.auto import tqdm

    from manifoldtrain._io import _publish_mode

    check_is_manifold("manifold", manifold)
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("order", order, minimum=0, maximum=2)
    check_int("shard_size", shard_size, minimum=1)
    check_int("workers", workers, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    dtype_name("dtype", dtype)
    dtype_name("compute_dtype", compute_dtype)
    target = check_cache_target(path)
    fp = fingerprint(manifold, n, seed, order, dtype, compute_dtype)
    bounds = _shard_bounds(n, shard_size)
    np_dtype = np.dtype("<f4") if dtype == torch.float32 else np.dtype("<f8")
    partial = _partial_path(target)

    def log(message: str) -> None:
        if progress:
            tqdm.write(message)

    # What is there already: a complete cache of this generation (to check), an unfinished
    # one (to continue), or neither.
    existing = _sharded_meta_of(target)
    if existing is not None and existing.get("fingerprint") == fp and existing.get("complete") is True and (
            existing.get("shard_size") == shard_size):
        if partial.exists():
            shutil.rmtree(partial)
        os.replace(target, partial)  # checked and repaired as an unfinished generation
        log(f"checking the complete cache at {target}")
    previous = _sharded_meta_of(partial)
    if partial.exists() and previous is None and not _ours_to_discard(partial):
        raise FileExistsError(
            f"path: {partial} is where an unfinished generation of {target.name} is kept, but it holds no "
            "manifoldtrain jet cache (no meta.json of one), so it is not ours to delete; move or delete it, or "
            "choose another path")
    if partial.exists() and (previous is None or previous.get("fingerprint") != fp
                             or previous.get("shard_size") != shard_size or previous.get("rows") != n):
        log(f"discarding an unfinished generation of other settings in {partial}")
        shutil.rmtree(partial)
        previous = None
    points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=compute_dtype, device=device)
    _check_finite_points(points.to(dtype), f"{type(manifold).__name__}.sample gave")
    if previous is None:
        # The shapes of one sample, from the jets of the first point.
        x, y = manifold.jets(points[:1], order)
        arrays = {"points": tuple(points.shape[1:])}
        for prefix, jet in (("input", x), ("target", y)):
            for name, comp in zip(_COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = tuple(comp.shape[1:])
        partial.mkdir(parents=True)
        _publish_mode(partial, directory=True)
        provenance = {**_provenance(manifold, n, seed, order, dtype, compute_dtype), "fingerprint": fp}
        _write_meta(partial, _sharded_meta(provenance, n, order, shard_size, arrays, False))
        previous = _sharded_meta_of(partial)
    else:
        previous = {**previous, "complete": False}
        _write_meta(partial, previous)
    arrays = {name: tuple(shape) for name, shape in previous["arrays"].items()}
    for leftover in partial.glob(".shard-*"):  # interrupted shards: never complete
        shutil.rmtree(leftover, ignore_errors=True)
    kept, todo = [], []
    for k, (a, b) in enumerate(bounds):
        folder = partial / shard_name(k)
        problem, _ = _check_shard(folder, k, a, b - a, fp, arrays, np_dtype)
        if problem is None:
            kept.append(k)
            continue
        if folder.exists():
            log(f"redoing shard {k}: {problem}")
            shutil.rmtree(folder)
        todo.append(k)
    if kept:
        log(f"continuing the generation in {partial}: {len(kept)} of {len(bounds)} shards are complete")
    done_rows = sum(bounds[k][1] - bounds[k][0] for k in kept)
    with tqdm(total=n, initial=done_rows, desc=f"jets of {type(manifold).__name__}", unit="sample",
              disable=not progress, leave=False) as bar:
        common = dict(folder=str(partial), order=order, dtype=dtype, batch_size=batch_size, fp=fp, arrays=arrays,
                      device=device)
        if workers == 1 or len(todo) <= 1:
            for k in todo:
                a, b = bounds[k]
                _render_shard(manifold, points[a:b], k, a, progress=bar.update, **common)
        else:
            _render_in_processes(manifold, points, bounds, todo, workers, bar, partial, common)
    _write_meta(partial, {**previous, "complete": True})
    _move_into_place(partial, target)
    return ShardReport(target, fp, n, len(bounds), tuple(todo), tuple(kept))


def _render_in_processes(manifold, points, bounds, todo, workers, bar, partial, common) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                   initializer=_worker_threads, initargs=(threads,))
    pending = {}
    try:
        for k in todo:
            a, b = bounds[k]
            future = executor.submit(_render_shard, manifold, points[a:b].cpu(), k, a, **common)
            pending[future] = k
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                k = pending.pop(future)
                future.result()
                bar.update(bounds[k][1] - bounds[k][0])
    except BrokenProcessPool as err:
        left = sorted(pending.values())
        raise RuntimeError(
            f"workers: a worker process died ({err}) before shards {left} were written; the shards finished so far "
            f"are kept in {partial}: run the same command again to continue"
        ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _ours_to_discard(folder: Path) -> bool:
    """Whether ``folder`` (an unfinished generation's place, with no readable meta.json of this
    version) is ours all the same: empty (stopped between making it and writing its meta.json),
    or its meta.json says it is a sharded jet cache of another version."""
    if folder.is_dir() and not any(folder.iterdir()):
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == SHARDS_FORMAT


def _sharded_meta_of(folder: Path) -> dict | None:
    """The ``meta.json`` of a sharded cache folder (complete or not), or None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT or meta.get("version") != SHARDS_VERSION:
        return None
    if not isinstance(meta.get("arrays"), dict):
        return None
    return meta
