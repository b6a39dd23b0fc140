"""Sharded jet caches, for data larger than memory: :class:`JetCache` (reads either format, only
the rows asked for), :func:`save_shards` and the resumable :func:`generate_shards` (format in
:mod:`manifoldtrain.data`)."""

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

from manifoldtrain._io import disk_full_error, locked, publish_mode, write_text_atomic
from manifoldtrain._validation import check_int, dtype_name, first_non_finite
from manifoldtrain.data.dataset import JetDataset, check_finite_jets, check_finite_points, fingerprint, provenance
from manifoldtrain.data.format import (COMPONENTS, DEFAULT_SHARD_SIZE, FORMAT, FORMAT_VERSION, SHARD_META, SHARDS_FORMAT,
                                       SHARDS_VERSION, array_names, check_cache_target, move_into_place, non_finite_in,
                                       partial_path, read_meta, shard_name, shard_remedy, shards_remedy)
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

#: Files a :class:`JetCache` keeps open at once (the least recently read are closed first).
_MAX_OPEN_FILES = 64
#: The keys of a sharded cache's ``meta.json`` that describe its layout, not its data.
_LAYOUT_KEYS = ("format", "version", "shapes", "rows", "shard_size", "n_shards", "arrays", "complete")


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
        meta, remedy = read_meta(self.path)
        fmt = meta.get("format")
        if expected_fingerprint is not None and fmt in (FORMAT, SHARDS_FORMAT) and (
                meta.get("fingerprint") != expected_fingerprint):
            raise ValueError(f"path: the cache at {path} was made with other settings (fingerprint differs)")
        order = meta.get("order")
        if fmt == FORMAT and meta.get("version") == FORMAT_VERSION:
            shapes = meta.get("shapes")
            if not isinstance(shapes, dict) or order not in (0, 1, 2) or any(
                    not isinstance(shapes.get(name), list) or not shapes[name] for name in array_names(order)):
                raise ValueError(f"path: {self.path / 'meta.json'} lacks the order or the array shapes, or they are "
                                 f"malformed; {remedy}")
            rows = shapes["points"][0]
            arrays = {name: shapes[name][1:] for name in array_names(order)}
            folders = [self.path]
            starts = [0]
            counts = [rows]
        elif fmt == SHARDS_FORMAT and meta.get("version") == SHARDS_VERSION:
            remedy = shards_remedy(self.path)
            arrays, rows, size, count = (meta.get(k) for k in ("arrays", "rows", "shard_size", "n_shards"))
            if (order not in (0, 1, 2) or not isinstance(arrays, dict) or not isinstance(rows, int)
                    or not isinstance(size, int) or size < 1 or count != math.ceil(rows / size)
                    or any(not isinstance(arrays.get(name), list) for name in array_names(order))):
                raise ValueError(f"path: {self.path / 'meta.json'} lacks the layout of the shards, or it is "
                                 f"malformed; {remedy}")
            if meta.get("complete") is not True:
                raise ValueError(f"path: the sharded cache at {path} is unfinished; run the `manifoldtrain generate` "
                                 "command that writes it again to finish it")
            arrays = {name: arrays[name] for name in array_names(order)}
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
            remedy = shard_remedy(files[k].path.parent) if self._sharded else self._remedy
            raise non_finite_in(files[k].path, sample - int(self._starts[k]), sample, remedy, self.name)
        return out

    def jets(self, indices, order: int | None = None, *, pin_memory: bool = False) -> tuple[Jet, Jet]:
        """``(inputs, targets)`` at ``indices``, up to ``order`` (default: :attr:`order`), read as :meth:`read`."""
        order = self.order if order is None else check_int("order", order, minimum=0, maximum=self.order)
        idx = self._index(indices)
        parts = {name: self.read(name, idx, pin_memory=pin_memory) for name in array_names(order) if name != "points"}
        inputs = Jet(*(parts[f"input_{c}"] for c in COMPONENTS[: order + 1]))
        targets = Jet(*(parts[f"target_{c}"] for c in COMPONENTS[: order + 1]))
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


#: What a full disk leaves of a generation (for its message).
_KEPT = "the finished shards are kept, and the same command continues the generation"


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
        except BaseException as err:
            self.abort()
            full = disk_full_error(folder / shard_name(index), err, note=_KEPT)
            if full is not None:
                raise full from None
            raise
        self.dtype = dtype

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
            try:
                self.files[name].write(memoryview(arr).cast("B"))
            except OSError as err:  # a full disk: say so, naming the shard's file (the finished shards are kept)
                full = disk_full_error(self.folder / shard_name(self.index) / f"{name}.npy", err, note=_KEPT)
                if full is None:
                    raise
                raise full from None
            self.written[name] += len(arr)

    def commit(self, fp: str | None) -> Path:
        try:
            if any(n != self.rows for n in self.written.values()):
                raise RuntimeError(f"shard {self.index}: wrote {self.written} rows, expected {self.rows} of each")
            for name, f in self.files.items():
                f.flush()
                os.fsync(f.fileno())
                f.close()
                publish_mode(self.tmp / f"{name}.npy")
            meta = {"format": SHARDS_FORMAT, "index": self.index, "start": self.start, "rows": self.rows,
                    "fingerprint": fp}
            with open(self.tmp / SHARD_META, "w") as f:
                f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            publish_mode(self.tmp / SHARD_META)
            publish_mode(self.tmp, directory=True)
            _fsync_dir(self.tmp)
            final = self.folder / shard_name(self.index)
            os.rename(self.tmp, final)  # complete, or not there at all
            _fsync_dir(self.folder)
            return final
        except BaseException as err:
            self.abort()
            full = disk_full_error(self.folder / shard_name(self.index), err, note=_KEPT)
            if full is not None:
                raise full from None
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
    if not isinstance(dataset, JetDataset):
        raise TypeError(f"dataset: expected a JetDataset, got {type(dataset).__name__}")
    check_int("shard_size", shard_size, minimum=1)
    check_finite_points(dataset.points, "dataset: has")
    check_finite_jets(dataset.inputs, dataset.targets, "dataset:")
    path = check_cache_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        arrays = {"points": dataset.points}
        for prefix, jet in (("input", dataset.inputs), ("target", dataset.targets)):
            for name, comp in zip(COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = comp.detach().cpu()
        dtype = np.dtype("<f4") if dataset.inputs.dtype == torch.float32 else np.dtype("<f8")
        shapes = {name: tuple(t.shape[1:]) for name, t in arrays.items()}
        for k, (a, b) in enumerate(_shard_bounds(len(dataset), shard_size)):
            writer = _ShardWriter(tmp, k, a, b - a, shapes, dtype)
            writer.write({name: t[a:b].to(dataset.inputs.dtype).numpy() for name, t in arrays.items()})
            writer.commit(dataset.meta.get("fingerprint"))
        provenance = {k: v for k, v in dataset.meta.items() if k not in _LAYOUT_KEYS}
        _write_meta(tmp, _sharded_meta(provenance, len(dataset), dataset.order, shard_size, shapes, True))
        publish_mode(tmp, directory=True)
        move_into_place(tmp, path)
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
            check_finite_jets(x, y, f"{type(manifold).__name__}.jets gave", first=start + k * batch_size, points=chunk)
            parts = {}
            for prefix, jet in (("input", x), ("target", y)):
                for name, comp in zip(COMPONENTS, jet.components()):
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
    with locked(target.parent / f".{target.name}.lock", "path", path):  # one generation at a time into a cache
        return _generate_shards(manifold, n, target, seed=seed, order=order, dtype=dtype, compute_dtype=compute_dtype,
                                shard_size=shard_size, workers=workers, batch_size=batch_size, device=device,
                                progress=progress)


def _generate_shards(manifold: Manifold, n: int, target: Path, *, seed: int, order: int, dtype: torch.dtype,
                     compute_dtype: torch.dtype, shard_size: int, workers: int, batch_size: int,
                     device: torch.device | str | None, progress: bool) -> ShardReport:
    """:func:`generate_shards`, its arguments checked, holding the cache's lock."""
    from tqdm.auto import tqdm

    fp = fingerprint(manifold, n, seed, order, dtype, compute_dtype)
    bounds = _shard_bounds(n, shard_size)
    np_dtype = np.dtype("<f4") if dtype == torch.float32 else np.dtype("<f8")
    partial = partial_path(target)

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
    check_finite_points(points.to(dtype), f"{type(manifold).__name__}.sample gave")
    if previous is None:
        # The shapes of one sample, from the jets of the first point.
        x, y = manifold.jets(points[:1], order)
        arrays = {"points": tuple(points.shape[1:])}
        for prefix, jet in (("input", x), ("target", y)):
            for name, comp in zip(COMPONENTS, jet.components()):
                arrays[f"{prefix}_{name}"] = tuple(comp.shape[1:])
        partial.mkdir(parents=True)
        publish_mode(partial, directory=True)
        described = {**provenance(manifold, n, seed, order, dtype, compute_dtype), "fingerprint": fp}
        _write_meta(partial, _sharded_meta(described, n, order, shard_size, arrays, False))
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
    move_into_place(partial, target)
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
