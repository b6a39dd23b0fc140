"""Files out, nothing lost: atomic writes that respect the umask, and output folders we own.

* Files are written to a temporary file beside the target, then renamed into place: a
  reader never sees half a file, an interrupted write leaves the old file.
* An *output folder* (a run, the demo) is recognisable as ours by a marker file,
  :data:`MARKER`. A command writes into a folder only if it is new, empty or already ours
  (of the same kind), unless told ``force``; it checks that it can write there before it
  starts work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The file that marks a folder as a manifoldtrain output folder (JSON: its kind).
MARKER = ".manifoldtrain"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path, directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (mode 0600/0700) the mode the user's umask asks for."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On error the temporary file is removed and ``path`` is left as it was. Parent folders
    are created. The file gets the permissions of the user's umask.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish_mode(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        full = disk_full_error(path, err)
        if full is not None:
            raise full from None
        raise


def disk_full_error(path: str | os.PathLike, err: BaseException, *,
                    note: str = "nothing was replaced") -> OSError | None:
    """A clear ``OSError`` naming ``path`` if ``err`` means that its disk is full (``ENOSPC``, or
    a library's failed write, such as ``torch.save``'s ``RuntimeError``, with under 1 MiB free
    there); else None. ``note`` says what became of the user's files (the atomic writes: nothing
    was replaced)."""
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    if not full and isinstance(err, RuntimeError) and "write" in str(err).lower():
        try:
            full = shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else ".").free < 1 << 20
        except OSError:
            full = False
    if not full:
        return None
    named = OSError(f"{path}: the disk is full (no space left on device); {note}: free some space, or write "
                    "elsewhere, and run the same command again")
    named.errno = errno.ENOSPC
    return named


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(folder: Path, argument: str) -> None:
    """Raise ``PermissionError`` naming ``argument`` unless a file can be created in ``folder``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    except OSError as err:
        raise PermissionError(f"{argument}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(tmp)


def check_parent_writable(target: Path, argument: str, shown: object, what: str) -> None:
    """Check that ``target`` (which need not exist yet, nor its parents) can be created: its
    nearest existing ancestor must be a writable folder. Errors name ``argument`` and show
    the path as ``shown`` (as the user gave it); ``what`` says what it would be."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"{argument}: {parent} is a file, so {shown} cannot be {what}")
    check_writable(parent, argument)


def claim_output_folder(path: str | os.PathLike, kind: str, *, force: bool = False, argument: str = "out") -> Path:
    """Make ``path`` an output folder of ``kind`` (``"run"``, ``"demo"``), or refuse.

    Accepted: a folder that does not exist (created, with parents), an empty one, or one
    that holds our marker of the same ``kind``. Anything else (a file, a folder of other
    files, another kind of output) is refused with an error naming ``argument`` and the
    remedy, unless ``force`` (a file is refused even then). Checks that the folder is
    writable, then writes the marker; a folder forced open beside other files has their
    names recorded in it (:func:`foreign_names`). Returns the folder.

    Raises
    ------
    FileExistsError
        ``path`` is a file, or a folder that is not ours and ``force`` is false.
    PermissionError
        The folder (or its parent) is not writable.
    """
    folder = Path(os.path.abspath(path))
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{argument}: {path} is a file, not a folder; choose a folder for the {kind}'s outputs")
    if folder.is_dir():
        marker = folder / MARKER
        theirs = _marker_kind(marker)
        others = sorted(e.name for e in folder.iterdir() if e.name != MARKER)
        if theirs is not None and theirs != kind and not force:
            raise FileExistsError(
                f"{argument}: {path} holds a manifoldtrain {theirs} output, not a {kind}; choose another folder, "
                "or pass --force to write into it anyway"
            )
        if theirs is None and others and not force:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise FileExistsError(
                f"{argument}: {path} already holds files that are not a manifoldtrain output ({shown}); choose a new "
                "or empty folder, or pass --force to write beside them (files of the same names are replaced)"
            )
    else:
        check_parent_writable(folder, argument, path, "a folder")
        folder.mkdir(parents=True, exist_ok=True)
        others = []
    check_writable(folder, argument)
    if _marker_kind(folder / MARKER) is None:
        marker = {"format": "manifoldtrain-output", "kind": kind}
        if others:  # forced open beside other files: recorded, so that no later command deletes them
            marker["foreign"] = others
        write_text_atomic(folder / MARKER, json.dumps(marker) + "\n")
    return folder


@contextlib.contextmanager
def release_if_unused(path: str | os.PathLike) -> Iterator[None]:
    """Undo :func:`claim_output_folder` on ``path`` if the block fails before writing anything.

    Records whether ``path`` existed and held our marker; if the block raises (a bad data
    path, an interrupt before the first file) and the folder then holds nothing but a marker
    that the block wrote, the marker goes, and the folder too if the block created it: a
    failed command leaves no empty run folder behind. A folder that holds anything else, or
    was ours before, is left as it is. Use it around the claim and the work that follows.
    """
    folder = Path(os.path.abspath(path))
    existed, marked = folder.is_dir(), (folder / MARKER).is_file()
    try:
        yield
    except BaseException:
        if not marked:
            with contextlib.suppress(OSError):
                if folder.is_dir() and [e.name for e in folder.iterdir()] == [MARKER]:
                    (folder / MARKER).unlink()
                    if not existed:
                        folder.rmdir()
        raise


def foreign_names(path: str | os.PathLike) -> frozenset[str]:
    """The names that output folder ``path`` held before :func:`claim_output_folder` first claimed
    it (with ``force``, beside other files), as its marker records them: never ours to delete."""
    names = (_read_marker(Path(os.path.abspath(path)) / MARKER) or {}).get("foreign", [])
    return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()


def _read_marker(marker: Path) -> dict | None:
    """The contents of our marker file ``marker``, or None (no file, or not one of ours)."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "manifoldtrain-output" else None


def _marker_kind(marker: Path) -> str | None:
    return (_read_marker(marker) or {}).get("kind")


def check_not_input(output: Path, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse to write ``output`` if it is one of the command's ``inputs`` (by argument name)."""
    out = Path(os.path.abspath(output))
    for argument, given in inputs.items():
        if given is not None and out.exists() and Path(given).exists() and os.path.samefile(out, given):
            raise FileExistsError(
                f"{argument}: {given} is also an output of this command ({out.name}) and would be replaced; "
                "copy it elsewhere first, or choose another output folder"
            )
