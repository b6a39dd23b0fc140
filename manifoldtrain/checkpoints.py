"""A run folder's files, the Trainer's collaborator for everything it writes and reads back:
the checkpoint to resume from, the best model and the metrics table (see
:mod:`manifoldtrain.training` for what each holds).

Every file is written atomically (a temporary file, then a rename) and checkpoints load with
``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from manifoldtrain._io import atomic_path, write_text_atomic
from manifoldtrain._plain import first_difference

__all__ = ["RunFiles", "load_checkpoint", "refused_resume", "metrics_table", "write_metrics_csv", "evaluated", "CHECKPOINT_NAME",
           "BEST_NAME", "METRICS_NAME", "PREVIOUS_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

#: The checkpoint to resume from, in ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
#: The model of lowest validation ``TrainConfig.best_metric`` (default RMSE), in ``checkpoint_dir`` (with
#: ``TrainConfig.validation > 0``).
BEST_NAME = "best.pt"
#: One row per evaluation, in ``checkpoint_dir``.
METRICS_NAME = "metrics.csv"
#: The folder, in ``checkpoint_dir``, where a run started afresh over an earlier one keeps the
#: earlier run's files until it has written its own first checkpoint (which removes it).
PREVIOUS_NAME = ".previous-run"
#: What a checkpoint file says it is, and its layout's version.
CHECKPOINT_FORMAT = "manifoldtrain-checkpoint"
CHECKPOINT_VERSION = 2


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file (``weights_only=True``) and check its format.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a manifoldtrain checkpoint of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, damaged, or another kind of file (torch's own advice is unsafe)
        raise ValueError(
            f"path: {path} is damaged or not a manifoldtrain checkpoint ({type(err).__name__}); if you meant another "
            "file, check the path; if it is a run's damaged checkpoint, move it aside or start over (train --no-resume)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: {path} is not a manifoldtrain checkpoint; move it away, or start over (train --no-resume)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"path: {path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def refused_resume(state: dict, identity: dict, *, older: dict | None = None) -> str | None:
    """Why a checkpoint may not be resumed by a run of ``identity`` (every setting that shapes
    the weights), as the first setting that differs (``key.field: A in the checkpoint, B now``),
    or None if it may.

    ``older`` maps an identity key to a function that brings what a checkpoint written by an
    earlier version records for it to today's form (settings added since, with the values that
    reproduce the old run; classes that have moved since).
    """
    for key, value in identity.items():
        theirs = state.get(key)
        if older and key in older:
            theirs = older[key](theirs)
        diff = first_difference(theirs, value, key)
        if diff is not None:
            return diff
    return None


@attrs.frozen
class RunFiles:
    """The files of a run in ``folder`` (None: a run that writes nothing).

    Attributes
    ----------
    folder : Path or None
    """

    folder: Path | None = attrs.field(converter=lambda p: Path(p) if p is not None else None)

    def _path(self, name: str) -> Path | None:
        return self.folder / name if self.folder is not None else None

    @property
    def checkpoint_path(self) -> Path | None:
        """``folder/checkpoint.pt``: the run to resume."""
        return self._path(CHECKPOINT_NAME)

    @property
    def best_path(self) -> Path | None:
        """``folder/best.pt``: the best model so far."""
        return self._path(BEST_NAME)

    @property
    def metrics_path(self) -> Path | None:
        """``folder/metrics.csv``: one row per evaluation."""
        return self._path(METRICS_NAME)

    def _target(self, path: Path | None) -> Path:
        if path is None:
            raise ValueError("checkpoint_dir: the trainer was made without a checkpoint directory")
        return path

    def read_checkpoint(self) -> dict | None:
        """The checkpoint (:func:`load_checkpoint`), or None if there is none."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return None
        return load_checkpoint(self.checkpoint_path)

    def save_checkpoint(self, state: dict) -> Path:
        """Write ``state`` as the checkpoint, atomically; returns its path. The files of an
        earlier run kept in :data:`PREVIOUS_NAME` (a run started over it) go once it is written."""
        path = self._save(state, self._target(self.checkpoint_path))
        previous = self.folder / PREVIOUS_NAME
        if previous.is_dir():
            shutil.rmtree(previous)
        return path

    def save_best(self, state: dict) -> Path:
        """Write ``state`` as ``best.pt``, atomically; returns its path."""
        return self._save(state, self._target(self.best_path))

    @staticmethod
    def _save(state: dict, path: Path) -> Path:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def write_metrics(self, records: Sequence[dict], terms: Sequence[str] = ()) -> Path:
        """Rewrite ``metrics.csv`` atomically from ``records`` (one row per evaluation); returns its path."""
        path = self._target(self.metrics_path)
        write_metrics_csv(records, path, terms=terms)
        return path


def evaluated(record: dict) -> bool:
    """Whether a history record holds an evaluation (test or validation numbers)."""
    return "test" in record or "validation" in record


def metrics_table(records: Sequence[dict], terms: Sequence[str] = ()) -> tuple[list[str], list[list]]:
    """The evaluations in ``records`` (:attr:`History.records`) as a table: ``(columns, rows)``.

    Columns: ``epoch``, ``step``, ``seconds``, ``lr``, ``loss``, ``loss.TERM`` for each term
    (``terms`` first, then any others in order of appearance), ``test.NAME`` for each test
    metric and ``validation.NAME`` for each validation metric. One row per record that was
    evaluated; a number that does not apply is ``None``.
    """
    rows_of = [r for r in records if evaluated(r)]
    term_names = list(dict.fromkeys([*terms, *(k for r in records for k in r.get("losses", {}))]))
    test_names = list(dict.fromkeys(k for r in rows_of for k in r.get("test", {})))
    val_names = list(dict.fromkeys(k for r in rows_of for k in r.get("validation", {})))
    columns = ["epoch", "step", "seconds", "lr", "loss", *(f"loss.{t}" for t in term_names),
               *(f"test.{m}" for m in test_names), *(f"validation.{m}" for m in val_names)]
    rows = []
    for r in rows_of:
        rows.append([r.get("epoch"), r.get("step"), r.get("seconds"), r.get("lr"), r.get("loss"),
                     *(r.get("losses", {}).get(t) for t in term_names),
                     *(r.get("test", {}).get(m) for m in test_names),
                     *(r.get("validation", {}).get(m) for m in val_names)])
    return columns, rows


def write_metrics_csv(records: Sequence[dict], path: str | os.PathLike, *, terms: Sequence[str] = ()) -> None:
    """Write :func:`metrics_table` of ``records`` as CSV to ``path`` atomically (``None``: an empty cell)."""
    columns, rows = metrics_table(records, terms)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    write_text_atomic(path, buffer.getvalue())
