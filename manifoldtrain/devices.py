"""Torch devices by name, checked to exist here (the base layer: it imports nothing of the library)."""

from __future__ import annotations

import argparse
import re

import torch

__all__ = ["check_device", "device_argument"]


def check_device(device: str | torch.device, argument: str = "device") -> torch.device:
    """The torch device called ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``), checked to exist here.

    Raises
    ------
    ValueError
        Another name, or CUDA asked for where it is not available (or no device ``N``); the
        message names ``argument``.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"{argument}: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"{argument}: {device!r} asked for, but CUDA is not available here ({why}; torch "
                             f"{torch.__version__}); use 'cpu'")
        index = int(device.split(":")[1]) if ":" in device else None
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(f"{argument}: {device!r} asked for, but this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return torch.device(device)


def device_argument(value: str) -> torch.device:
    """:func:`check_device` as an ``argparse`` ``type=``, for a script's ``--device`` option: a bad
    name or a missing CUDA device is the parser's usage error (``argument --device: ...``)."""
    try:
        return check_device(value, "--device")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--device: ")) from None
