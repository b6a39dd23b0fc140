"""The on-disk formats of jet caches and the checks that every reader and writer of them shares.

See :mod:`manifoldtrain.data` for the formats themselves."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from manifoldtrain._io import check_writable

#: ``meta.json``'s ``format`` and ``version`` of a single-file cache.
FORMAT = "manifoldtrain-jets"
FORMAT_VERSION = 1
#: The components of a jet, in the order of the arrays' names (``input_value``, ``input_d1``, ...).
COMPONENTS = ("value", "d1", "d2")
#: ``meta.json``'s ``format`` and ``version`` of a sharded cache.
SHARDS_FORMAT = "manifoldtrain-jet-shards"
SHARDS_VERSION = 1
#: Samples per shard written by :func:`~manifoldtrain.data.generate_shards` unless told otherwise (order-2 cube
#: jets: about 190 MB per shard in float32).
DEFAULT_SHARD_SIZE = 1024
#: The file in every shard folder that says which shard it is.
SHARD_META = "shard.json"


def array_names(order: int) -> list[str]:
    """The arrays of a cache of jets of ``order``: ``points``, then the input's and target's components."""
    return ["points"] + [f"{prefix}_{c}" for prefix in ("input", "target") for c in COMPONENTS[: order + 1]]


def shard_name(index: int) -> str:
    """The folder name of shard ``index`` in a sharded cache: ``shard-00000``, ``shard-00001``, ..."""
    return f"shard-{index:05d}"


def partial_path(target: Path) -> Path:
    """Where an unfinished generation of ``target`` lives: ``.NAME.partial`` beside it."""
    return target.parent / f".{target.name}.partial"


def cache_remedy(path: Path) -> str:
    """The remedy for a damaged single-file cache at ``path``, for error messages."""
    return (f"write the cache again (`manifoldtrain generate`, or save_jets; a cache in a data.cache_dir: delete "
            f"{path} and the next run computes it anew)")


def shards_remedy(path: Path) -> str:
    """The remedy for a damaged or unfinished sharded cache at ``path``, for error messages."""
    return (f"run the `manifoldtrain generate` command that wrote it again: it keeps the intact shards and redoes "
            f"the others (or delete {path} and generate it anew)")


def shard_remedy(folder: Path) -> str:
    """The remedy for one damaged shard that the opening checks cannot see (so a generation
    continued over it would keep it)."""
    return (f"delete {folder} and rerun what wrote the cache (the `manifoldtrain generate` command, or a run with "
            f"data.cache_dir): it computes that shard anew and keeps the others")


def non_finite_in(file: Path, row: int, sample: int, remedy: str, name: str = "path") -> ValueError:
    """The error for a cache file holding a NaN or an infinity (caches are written with finite
    values only: the file changed since)."""
    return ValueError(f"{name}: {file} holds NaN or infinite values in row {row} (sample {sample} of the cache); caches "
                      f"are written with finite values only, so the file is damaged: {remedy}")


def renamed(err: Exception, argument: str, name: str = "path") -> Exception:
    """An error naming ``name`` (``path: ...``: :func:`load_jets`, :class:`JetCache`) as the
    caller's ``argument``'s."""
    message = str(err)
    return type(err)(f"{argument}: {message.removeprefix(f'{name}: ')}")


def read_meta(path: Path) -> tuple[dict, str]:
    """``(meta.json's contents, the remedy to quote)`` of a cache folder; errors as :func:`load_jets`."""
    meta_file = path / "meta.json"
    remedy = cache_remedy(path)
    if not meta_file.is_file():
        partial = "" if not partial_path(Path(os.path.abspath(path))).is_dir() else (
            f"; an unfinished generation is in {partial_path(Path(os.path.abspath(path))).name} beside it: run the "
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


def move_into_place(tmp: Path, path: Path) -> None:
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


