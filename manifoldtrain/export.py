"""A trained network as a ``torch.export`` program: runs with torch alone, without this library.

:func:`export_run` writes the model of a run folder (or of one checkpoint file) with
:func:`torch.export.export` and :func:`torch.export.save`. The program takes inputs
``[n, *input_shape]`` (any ``n >= 1``) in the run's dtype and returns ``[n, m]`` targets:
the input normalisation (the model's first layer) and the output scaling (its last) are part
of it. Load it anywhere with::

    import torch
    program = torch.export.load("model.pt2")
    y = program.module()(x)

The program checks its input's dtype: an input of another dtype (float64 for a float32
model) fails with ``RuntimeError: Tensor dtype mismatch! Expected: Float, Got: double``
(convert it first: ``x.float()``), not in the middle of the network.

The file also holds ``manifoldtrain.json`` (read with :func:`export_info`, or with torch alone:
``torch.export.load(path, extra_files={"manifoldtrain.json": ""})``): the format, the input and
target shapes, the dtype, the manifold (``manifold``: its class and settings, as the run recorded
them), the names of the outputs (``output_names``, one per output in the flattened target's
order: the manifold's ``target_names`` as the run recorded them, or for older runs as the
manifold's class declares them, else ``y0``, ``y1``, ...),
the checkpoint it came from, its epoch, and the library and torch versions. That entry is also
how a later export recognises a file it may replace.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from manifoldtrain._io import atomic_path, check_not_input, check_parent_writable

__all__ = ["EXPORT_FORMAT", "export_run", "export_model", "is_export", "export_info", "output_names"]

#: The ``format`` written into every export's ``manifoldtrain.json``.
EXPORT_FORMAT = "manifoldtrain-export"
_INFO = "manifoldtrain.json"


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`export_model` (a ``torch.export`` archive
    holding our ``manifoldtrain.json`` with :data:`EXPORT_FORMAT`)."""
    return export_info(path) is not None


def export_info(path: str | os.PathLike) -> dict | None:
    """The ``manifoldtrain.json`` of an export at ``path``, or None if it is not one."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{_INFO}")]
            if len(names) != 1:
                return None
            info = json.loads(archive.read(names[0]))
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return info if isinstance(info, dict) and info.get("format") == EXPORT_FORMAT else None


class _DtypeChecked(torch.nn.Module):
    """``model`` behind a check of its input's dtype that the exported program keeps (a torch
    operator, so the program needs nothing of this library): a clear error naming the dtype
    expected instead of a failed matrix product deep in the network."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten._assert_tensor_metadata.default(x, dtype=self.dtype)
        return self.model(x)


def output_names(manifold: dict | None, target_shape: list[int]) -> list[str]:
    """The names of a model's outputs, one per output in the flattened target's order: the
    ``target_names`` that the manifold's class (``manifold``: as a checkpoint records it, its
    ``class`` and ``settings``) declares as a class attribute of that many strings, else ``y0``,
    ``y1``, ..."""
    count = 1
    for size in target_shape:
        count *= int(size)
    names = None
    if isinstance(manifold, dict) and isinstance(manifold.get("class"), str):
        from manifoldtrain.registry import MANIFOLDS

        try:
            names = getattr(MANIFOLDS.get(manifold["class"]), "target_names", None)
        except (TypeError, ValueError, ImportError):  # a manifold that cannot be imported here
            names = None
    if isinstance(names, (tuple, list)) and len(names) == count and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"y{i}" for i in range(count)]


def _check_target(out: Path, force: bool, argument: str) -> None:
    """Nothing lost: ``out`` may be new or an earlier export; anything else only with ``force``, never a folder."""
    if out.is_dir():
        raise IsADirectoryError(f"{argument}: {out} is a folder; give the name of the file to write (e.g. model.pt2)")
    if out.exists() and not force and not is_export(out):
        raise FileExistsError(f"{argument}: {out} exists and is not a manifoldtrain export; choose another name, "
                              "or pass --force to replace it")
    check_parent_writable(out, argument, out, "written")


def export_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    out: str | os.PathLike,
    *,
    info: dict | None = None,
    force: bool = False,
    argument: str = "out",
) -> Path:
    """Export ``model`` traced on ``example`` ``[n, *input_shape]`` to the file ``out``, atomically.

    The batch dimension is dynamic (any size >= 1); the other dimensions, the dtype and the
    device are those of ``example`` (an input of another dtype is refused by the program, naming
    the dtype expected). ``info`` (JSON-able) is stored beside the program in
    ``manifoldtrain.json``. ``out`` must be new or an earlier export (replaced); another file
    only with ``force``; a folder never. Errors name ``argument``.

    Raises
    ------
    FileExistsError, IsADirectoryError, PermissionError
        ``out`` may not be written (see above).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 2:
        raise ValueError("example: expected a tensor [n, *input_shape] with n >= 2 "
                         "(a batch of 1 would fix the batch size)")
    out = Path(os.path.abspath(out))
    _check_target(out, force, argument)
    was_training = model.training
    model.eval()
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(_DtypeChecked(model, example.dtype), (example,), dynamic_shapes=({0: batch},))
    finally:
        model.train(was_training)
    meta = {"format": EXPORT_FORMAT, "version": 1, **(info or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.export.save(program, tmp, extra_files={_INFO: json.dumps(meta)})
    return out


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Export the trained network of a run folder (its ``best.pt`` where it has one, else its
    ``checkpoint.pt``; see :func:`manifoldtrain.experiment.run_checkpoint`) or of a checkpoint
    file to ``out`` (see :func:`export_model`); returns the path written.

    Raises
    ------
    FileNotFoundError
        No checkpoint at ``run``.
    ValueError
        The checkpoint is damaged, not ours, or does not say how to rebuild its model.
    FileExistsError, IsADirectoryError, PermissionError
        ``out`` may not be written.
    """
    from manifoldtrain import __version__
    from manifoldtrain._validation import dtype_from_name
    from manifoldtrain.experiment import model_from_checkpoint, run_checkpoint
    from manifoldtrain.training import load_checkpoint

    out = Path(os.path.abspath(out))
    _check_target(out, force, "out")  # before the work
    checkpoint = run_checkpoint(run)
    check_not_input(out, {"run": checkpoint})
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state)
    spec = state["extra"]["model_spec"]
    dtype = dtype_from_name("model_spec.dtype", spec["dtype"])
    # A batch of the training inputs' mean would do as well: tracing needs shapes, not values.
    example = torch.zeros(2, *spec["input_shape"], dtype=dtype)
    manifold = state["extra"].get("manifold")
    info = {
        "input_shape": list(spec["input_shape"]),
        "target_shape": list(spec["target_shape"]),
        "dtype": spec["dtype"],
        "manifold": manifold,
        # The names the run was trained with (recorded since per-output metrics), else the class's.
        "output_names": list(state["extra"].get("target_names") or output_names(manifold, spec["target_shape"])),
        "checkpoint": checkpoint.name,
        "epoch": state.get("epoch"),
        "manifoldtrain": __version__,
        "torch": torch.__version__,
    }
    return export_model(model, example, out, info=info, force=force, argument="out")
