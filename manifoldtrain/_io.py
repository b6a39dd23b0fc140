"""Files out, nothing lost: atomic writes that respect the umask, and output folders we own.

* Files are written to a temporary file beside the target, then renamed into place: a
  reader never sees half a file, an interrupted write leaves the old file.
* An *output folder* (a run, the demo) is recognisable as ours by a marker file,
  :data:`MARKER`. A command writes into a folder only if it is new, empty or already ours
  (of the same kind), unless told ``force``; it checks that it can write there before it
  starts work.
* One command at a time per output folder: :func:`output_folder` holds a lock
  (:data:`LOCK`, with the holder's process id and host) while the command works there; a
  second command into the same folder is refused, naming the holder. A lock left by a
  process that has died (killed, a lost machine) is taken over with a note, and the
  temporary files that process left (half-written files of :func:`atomic_path`) are removed.
  The lock is an advisory ``flock`` on POSIX systems (elsewhere folders are not locked).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

#: The file that marks a folder as a manifoldtrain output folder (JSON: its kind).
MARKER = ".manifoldtrain"
#: The lock file of an output folder while a command works in it (JSON: pid, host, command, since).
LOCK = ".manifoldtrain.lock"
#: What the temporary files of :func:`atomic_path` and :func:`check_writable` are called
#: (``.NAME.tmp-XXXXXXXX[.suffix]``, ``.write-test-XXXXXXXX``; and ``.NAME.XXXXXXXX[.suffix]``
#: of earlier versions, whose suffix is NAME's), for :func:`remove_temporaries`.
_TEMPORARY = re.compile(r"^\..+\.tmp-[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
_TEMPORARY_BEFORE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)$")
_WRITE_TEST = re.compile(r"^\.write-test-[a-z0-9_]{8}$")

try:
    import fcntl
except ImportError:  # not a POSIX system: output folders are not locked
    fcntl = None


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix or path.suffix)
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
    """Make ``path`` an output folder of ``kind`` (``"run"``, ``"demo"``), or refuse; lock it.

    Accepted: a folder that does not exist (created, with parents), an empty one, or one
    that holds our marker of the same ``kind``. Anything else (a file, a folder of other
    files, another kind of output) is refused with an error naming ``argument`` and the
    remedy, unless ``force`` (a file is refused even then). Checks that the folder is
    writable, takes its lock (:func:`lock_path`; refused while another process holds it),
    removes the temporary files that an interrupted command left there
    (:func:`remove_temporaries`), then writes the marker; a folder forced open beside other
    files has their names recorded in it (:func:`foreign_names`). Returns the folder.

    The lock is held until :func:`unlock_path` of ``folder / LOCK``: use :func:`output_folder`,
    which claims and releases.

    Raises
    ------
    FileExistsError
        ``path`` is a file, or a folder that is not ours and ``force`` is false.
    BlockingIOError
        Another process works in the folder (its lock is held).
    PermissionError
        The folder (or its parent) is not writable.
    """
    folder = Path(os.path.abspath(path))
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{argument}: {path} is a file, not a folder; choose a folder for the {kind}'s outputs")
    if folder.is_dir():
        marker = folder / MARKER
        theirs = _marker_kind(marker)
        others = sorted(e.name for e in folder.iterdir() if e.name not in (MARKER, LOCK))
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
    lock_path(folder / LOCK, argument, path)
    try:
        if _marker_kind(folder / MARKER) is None:
            marker = {"format": "manifoldtrain-output", "kind": kind}
            if others:  # forced open beside other files: recorded, so that no later command deletes them
                marker["foreign"] = others
            write_text_atomic(folder / MARKER, json.dumps(marker) + "\n")
        remove_temporaries(folder)
    except BaseException:
        unlock_path(folder / LOCK)
        raise
    return folder


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, kind: str, *, force: bool = False, argument: str = "out") -> Iterator[Path]:
    """:func:`claim_output_folder` for the block: the folder is locked inside it and unlocked
    after; if the block fails before writing anything there, the claim is undone
    (:func:`release_if_unused`). Nested blocks of one process on the same folder share its lock."""
    with release_if_unused(path):
        folder = claim_output_folder(path, kind, force=force, argument=argument)
        try:
            yield folder
        finally:
            unlock_path(folder / LOCK)


#: The locks this process holds: lock file -> [file descriptor, depth, pid].
_HELD: dict[str, list] = {}


def _holder() -> dict:
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "manifoldtrain"):  # python -m manifoldtrain, or the console script
        program = "manifoldtrain"
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([program, *sys.argv[1:]])[:500],
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read_holder(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a process that has not said which"
    said = [str(holder[k]) for k in ("command", "since") if holder.get(k)]
    return f"process {holder.get('pid')} on {holder.get('host')}" + (f" ({', since '.join(said)})" if said else "")


def lock_path(lock: str | os.PathLike, argument: str, shown: object) -> None:
    """Take the lock file ``lock`` for this process, or refuse: a ``BlockingIOError`` naming
    ``argument``, the folder ``shown`` and the process that holds it. Re-entrant: a process
    that holds it already counts one more hold (release each with :func:`unlock_path`).
    A lock file left by a process that no longer runs is taken over, with a warning."""
    key = os.path.abspath(lock)
    held = _HELD.get(key)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        return
    if fcntl is None:
        return
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BlockingIOError(
                f"{argument}: {shown} is in use by another manifoldtrain command ({_describe_holder(holder)}); "
                f"wait for it to finish, or choose another folder (two commands writing into one folder would "
                f"mix their files)") from None
        try:  # the file at that path still, not one that its last holder removed as we opened it?
            same = os.path.samestat(os.fstat(fd), os.stat(key))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_holder(fd)
    if previous:
        warnings.warn(f"{argument}: {shown} was locked by {_describe_holder(previous)}, which no longer runs (it was "
                      "interrupted or killed); taking over its lock and removing the temporary files it left",
                      stacklevel=3)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
    _HELD[key] = [fd, 1, os.getpid()]


def unlock_path(lock: str | os.PathLike) -> None:
    """Release one hold of this process on the lock file ``lock`` (:func:`lock_path`); the
    last removes the file and frees the lock. Nothing happens if this process does not hold it."""
    key = os.path.abspath(lock)
    held = _HELD.get(key)
    if held is None or held[2] != os.getpid():
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        os.unlink(key)  # while still held: nobody takes a file that is about to go
    os.close(held[0])


@contextlib.contextmanager
def locked(lock: str | os.PathLike, argument: str, shown: object) -> Iterator[None]:
    """Hold the lock file ``lock`` (:func:`lock_path`) for the block."""
    lock_path(lock, argument, shown)
    try:
        yield
    finally:
        unlock_path(lock)


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove from ``folder`` the temporary files that an interrupted command left there (a
    half-written checkpoint or results file of :func:`atomic_path`, a write test of
    :func:`check_writable`); returns their names. Names the folder's marker records as not
    ours (:func:`foreign_names`) are kept. Call it only while holding the folder's lock."""
    folder = Path(folder)
    theirs = foreign_names(folder)
    removed = []
    for entry in folder.iterdir():
        name = entry.name
        before = _TEMPORARY_BEFORE.match(name)
        ours = (_TEMPORARY.match(name) is not None or _WRITE_TEST.match(name) is not None
                or (before is not None and Path(before["name"]).suffix == before["suffix"]))
        if ours and name not in theirs and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(name)
    return sorted(removed)


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
                if folder.is_dir() and [e.name for e in folder.iterdir() if e.name != LOCK] == [MARKER]:
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
