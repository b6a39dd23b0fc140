"""What a results file records about how its figures were made: the machine and the command.

For benchmarks and scripts as for the library's own runs:

>>> from manifoldtrain.records import command_line, machine_info
>>> sorted(machine_info())[:3]
['git_commit', 'machine', 'manifoldtrain']
>>> command_line(["--quick"], "benchmarks/accuracy.py")  # doctest: +ELLIPSIS
'python ...accuracy.py --quick'

:func:`write_text_atomic` writes a results file so that a reader never sees half of it;
:func:`write_json` writes one as strict JSON:

>>> print(strict_json({"rmse": float("nan"), "ratios": [2.5, float("inf")]}, indent=None), end="")
{"rmse": null, "ratios": [2.5, null]}
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path

import torch

from manifoldtrain._io import write_text_atomic

__all__ = ["machine_info", "command_line", "write_text_atomic", "strict_json", "write_json"]


def _git_commit() -> str | None:
    """The git commit of the library's source tree, where it is one (an editable install)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info(device: torch.device | None = None) -> dict:
    """Where and with what a figure was measured: library, torch and Python versions, git
    commit, threads, processor; with ``device``, also ``device`` and, for a CUDA one, its
    ``device_name``."""
    from manifoldtrain import __version__

    info = {
        "manifoldtrain": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
    return info


def command_line(argv: list[str] | None = None, script: str | os.PathLike | None = None) -> str:
    """How a script was invoked, as ``python SCRIPT ARGS`` (``argv``: its arguments, default
    ``sys.argv[1:]``; ``script``: its file, default ``sys.argv[0]``, which is another script's
    when one runs it in-process), for results files to say which command produced them."""
    script = sys.argv[0] if script is None else script
    return "python " + " ".join([os.path.relpath(script), *(sys.argv[1:] if argv is None else argv)])


def _finite(value):
    """``value`` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(value, *, indent: int | None = 2) -> str:
    """``value`` as strict JSON text (RFC 8259), ending in a newline: NaN and infinities, which
    Python's ``json`` writes as bare ``NaN`` and ``Infinity`` that other readers refuse, become
    ``null`` (a number that could not be computed)."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, value) -> None:
    """Write ``value`` to ``path`` as :func:`strict_json`, atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, strict_json(value))
