"""What a results file records about how its figures were made: the machine and the command.

For benchmarks and scripts as for the library's own runs:

>>> from manifoldtrain.records import command_line, machine_info
>>> sorted(machine_info())[:3]
['git_commit', 'machine', 'manifoldtrain']
>>> command_line(["--quick"], "benchmarks/accuracy.py")  # doctest: +ELLIPSIS
'python ...accuracy.py --quick'

:func:`write_text_atomic` writes a results file so that a reader never sees half of it.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from manifoldtrain._io import write_text_atomic

__all__ = ["machine_info", "command_line", "write_text_atomic"]


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
