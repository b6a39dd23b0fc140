"""One training loop for every objective: optimiser, schedule, evaluation, checkpoints, resume.

Checkpoints
-----------
``checkpoint_dir/checkpoint.pt`` is rewritten atomically (temporary file, then rename) at the
end of an epoch once ``checkpoint_interval`` seconds (default 60) have passed since the last
one, every ``checkpoint_every`` epochs if set, and at the end. It holds plain data only and loads with
``torch.load(..., weights_only=True)``: model and optimiser state, the generator that orders
batches and draws random directions, epoch, step count, training seconds, history, the
configs, the loss scales and each term's normaliser, the training data's fingerprint and,
with a validation set, the best model so far (its weights, epoch and validation numbers) and
how many evaluations have passed without improvement. :meth:`Trainer.fit` with
``resume=True`` continues from it: a run killed at any moment and resumed finishes with the
same weights as an uninterrupted run (with an epoch budget; a wall-clock budget depends on
the machine's speed). The checkpoint also records how many processes wrote it (``world_size``),
for information only: a run resumes on any number of processes.

Several processes
-----------------
With a :class:`~manifoldtrain.distributed.DistributedContext` of several processes
(``distributed=``, e.g. under ``torchrun``) the trainer trains one model on all of them: every
step's global batch of ``batch_size`` samples comes from one batch order (the same generator,
identical on every process), each process computes the losses on its shard and the gradients
are summed with weights shard / global batch, so that the step is the single-process step
(exactly so for an objective without random directions, up to rounding). Random directions
come from a generator of each process's own (:func:`~manifoldtrain.distributed.direction_seed`).
Every process holds the whole training set and computes the same loss scales (rank 0's are
used, and the others are checked against them); with a :class:`~manifoldtrain.data.sources.DataSource`
(a sharded cache, data computed on the fly) each process reads only its shards of the batches,
rank 0 computes the loss scales and hands them to the others, and every process checks that it
has the same source (fingerprint, size, shapes). Evaluations run on every process and rank 0's
numbers are used, so that the best model and early stopping are decided alike everywhere;
the training time is agreed (the largest of the processes'), so that every process stops at
the same step. Only rank 0 writes files and shows progress.

Training data
-------------
``train`` is a :class:`~manifoldtrain.data.JetDataset` in memory (its jets are scaled once and
put on the model's device, and every batch is gathered from them) or any
:class:`~manifoldtrain.data.sources.DataSource`: a sharded cache on disk, data computed on the
fly, a source of your own. A source is asked for each batch's unscaled jets (the next batch
is read in a background thread while the current step computes; on CUDA into page-locked
memory, copied asynchronously), which are then scaled and moved to the model's device. Its
loss scales come from :meth:`DataSource.statistics
<manifoldtrain.data.sources.DataSource.statistics>` (exact for a cache; a calibration sample for
data computed on the fly), its validation set from :meth:`DataSource.hold_out
<manifoldtrain.data.sources.DataSource.hold_out>`. The same data as a ``JetDataset`` and as a
source give the same batches and the same weights.

Validation, best model, early stopping
--------------------------------------
With ``TrainConfig.validation > 0`` a fraction of the training data is held out (the same
samples for the same ``seed``) and scored with the Trainer's metrics at every evaluation.
The model of lowest validation ``best_metric`` (default ``rmse``) so far is written to
``checkpoint_dir/best.pt`` (:data:`BEST_NAME`; atomically, in the checkpoint's format, without the optimiser and
generator: it is a model to use, not a run to resume). With ``patience``, training stops
once that many evaluations in a row have not improved on it.

Metrics file
------------
``checkpoint_dir/metrics.csv`` (:data:`METRICS_NAME`) holds one row per evaluation: epoch,
step, training seconds, learning rate, the training loss and each term's, every test metric
(``test.NAME``) and every validation metric (``validation.NAME``). It is rewritten
atomically from the history at every evaluation, so a resumed run continues it without
duplicate rows.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch

from manifoldtrain._plain import first_difference, plain, qualified_name
from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.checkpoints import (  # re-exported: public here before
    BEST_NAME, CHECKPOINT_FORMAT, CHECKPOINT_NAME, CHECKPOINT_VERSION, METRICS_NAME, RunFiles, evaluated, load_checkpoint,
    metrics_table, refused_resume, write_metrics_csv,
)
from manifoldtrain.data import JetDataset, check_dataset
from manifoldtrain.data.sources import DataSource, InMemorySource
from manifoldtrain.data.statistics import LossScales
from manifoldtrain.distributed import DistributedContext, direction_seed, mark_agreed
from manifoldtrain.evaluation import JetRMSE, check_metric_values
from manifoldtrain.feed import SourceFeed
from manifoldtrain.jet import Jet
from manifoldtrain.network_jets import check_jet_model, taylor_rows
from manifoldtrain.objectives import DerivativeTerm, Objective
from manifoldtrain.objectives.objective import FORMER_NAME as OBJECTIVE_FORMER_NAME
from manifoldtrain.selection import BestModel

__all__ = ["TrainConfig", "Trainer", "History", "load_checkpoint", "metrics_table", "write_metrics_csv",
           "CHECKPOINT_NAME", "BEST_NAME", "METRICS_NAME"]

#: The default of :attr:`TrainConfig.best_metric`: the validation metric whose lowest value
#: chooses the best model (:class:`~manifoldtrain.evaluation.JetRMSE`'s clean RMSE).
BEST_METRIC = "rmse"


def _optional_positive(instance, attribute, value):
    if value is not None:
        check_float(attribute.name, value, positive=True)


def _optional_count(instance, attribute, value):
    if value is not None:
        check_int(attribute.name, value, minimum=1)


def _check_validation(instance, attribute, value):
    check_float(attribute.name, value, nonnegative=True)
    if value >= 1:
        raise ValueError(f"{attribute.name}: expected a fraction of the training data in [0, 1), got {value}")


def _check_metric_name(instance, attribute, value):
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected the name of a metric's number (e.g. 'rmse'), got {value!r}")
    if not value:
        raise ValueError(f"{attribute.name}: expected the name of a metric's number (e.g. 'rmse'), got ''")
    if value != BEST_METRIC and instance.validation == 0:
        raise ValueError(f"{attribute.name}: chooses the best model on a validation set; set validation > 0 (e.g. "
                         "0.1), or leave best_metric unset")


def _check_patience(instance, attribute, value):
    if value is None:
        return
    check_int(attribute.name, value, minimum=1)
    if instance.validation == 0:
        raise ValueError(f"{attribute.name}: early stopping needs a validation set; set validation > 0 (e.g. 0.1), "
                         "or leave patience unset")


#: TrainConfig fields that do not shape the weights: a resumed run may change them (and
#: checkpoints do not compare them).
_NOT_IDENTITY = ("progress", "checkpoint_every", "checkpoint_interval", "eval_overhead")

#: TrainConfig fields added after checkpoint version 2 was defined, with the values that
#: reproduce the training of a checkpoint that predates them.
_NEW_FIELD_DEFAULTS = {"validation": 0.0, "patience": None, "best_metric": BEST_METRIC}


def _older_objective(theirs):
    """An objective recorded before :class:`Objective` moved to its own module, or before
    :attr:`DerivativeTerm.grid <manifoldtrain.objectives.DerivativeTerm.grid>` existed (those
    runs trained with ``grid=False``)."""
    if isinstance(theirs, dict) and theirs.get("kind") == OBJECTIVE_FORMER_NAME:
        theirs = {**theirs, "kind": qualified_name(Objective)}
    if isinstance(theirs, dict) and isinstance(theirs.get("terms"), list):
        derivative = qualified_name(DerivativeTerm)
        theirs = {**theirs, "terms": [{**t, "grid": False} if isinstance(t, dict) and t.get("kind") == derivative
                                      and "grid" not in t else t for t in theirs["terms"]]}
    return theirs


#: What checkpoints written by earlier versions record, brought to today's form before a resume
#: compares it (:func:`~manifoldtrain.checkpoints.refused_resume`).
_OLDER_IDENTITY = {
    "train_config": lambda theirs: ({k: v for k, v in {**_NEW_FIELD_DEFAULTS, **theirs}.items() if k not in _NOT_IDENTITY}
                                    if isinstance(theirs, dict) else theirs),
    "objective": _older_objective,
}


def _check_weight_decay(instance, attribute, value):
    value = check_float(attribute.name, value, nonnegative=True)
    lr = instance.learning_rate
    if isinstance(lr, (int, float)) and lr * value >= 1:
        raise ValueError(f"{attribute.name}: expected learning_rate * weight_decay < 1 (AdamW multiplies the weights by "
                         f"1 - learning_rate * weight_decay every step; at or above 1 they flip sign and blow up), got "
                         f"{value:g} with learning_rate {lr:g}")


@attrs.frozen
class TrainConfig:
    """How to train (model and objective are separate).

    Attributes
    ----------
    epochs : int
        Passes over the training data, at most (default 50).
    time_budget : float or None
        Seconds of training steps, at most (evaluation and checkpoints not counted); ``None``:
        no limit. The learning-rate schedule runs over whichever budget ends first.
    batch_size : int
        Samples per step (default 64).
    learning_rate : float
        Peak Adam learning rate (default 1e-3).
    final_lr_fraction : float
        The learning rate decays by a cosine to this fraction of its peak (default 0.01; 1.0
        keeps it constant).
    warmup_fraction : float
        Fraction of the budget with a linear warm-up (default 0.02).
    weight_decay : float
        AdamW weight decay (default 0), with ``learning_rate * weight_decay < 1`` (each step
        multiplies the weights by ``1 - learning_rate * weight_decay``).
    grad_clip : float or None
        Clip the gradient norm to this (default None).
    eval_every : int
        Evaluate on the test data every this many epochs (0: only at the end).
    eval_interval : float or None
        Also evaluate at the end of an epoch once this many training seconds have passed
        since the last evaluation (learning curves over time; evaluation does not change the
        run).
    eval_overhead : float or None
        Skip a test evaluation that is due (by ``eval_every`` or ``eval_interval``) while the
        test evaluations so far have taken more than this fraction of the training seconds
        (default 0.1: the learning curve costs at most about a tenth of the training); the
        last epoch is always evaluated, and the validation set (best model, early stopping)
        at every evaluation due. ``None`` (or, in a TOML file, a large value such as 1000): every
        evaluation due runs. It changes no weights, and a resumed run may change it.
    checkpoint_every : int or None
        Write a checkpoint every this many epochs (default None: by ``checkpoint_interval``).
    checkpoint_interval : float or None
        Write a checkpoint at the end of an epoch once this many seconds (of wall-clock time)
        have passed since the last one was written, or since training started (default 60: a
        killed run loses about a minute of work, and a run writes no checkpoint per epoch).
        ``None``: by ``checkpoint_every`` only. A checkpoint is always written at the end.
        Neither changes the weights: a resumed run may change them.
    seed : int
        Seeds the batch order and the random directions, and chooses the validation samples
        (default 0).
    validation : float
        Fraction of the training data held out as a validation set (default 0: none), at
        least one sample when above 0. It is scored with the Trainer's metrics at every
        evaluation; the model of lowest validation ``best_metric`` is kept as ``best.pt``
        beside the checkpoint. A :class:`~manifoldtrain.data.sources.DataSource` gives it by
        :meth:`~manifoldtrain.data.sources.DataSource.hold_out` (the same samples as in memory; for
        data drawn anew every epoch, points of a draw of their own).
    patience : int or None
        Early stopping: stop once this many evaluations in a row have not lowered the
        validation ``best_metric`` (needs ``validation > 0``; default None: never stop early).
    best_metric : str
        The name of the validation number whose lowest value chooses the best model and
        drives ``patience``: any number a metric returns (default ``"rmse"``, the clean RMSE
        of :class:`~manifoldtrain.evaluation.JetRMSE`; a metric of your own may return its
        own, negated where higher is better). Needs ``validation > 0`` unless left at its
        default; checked against the metrics' numbers at the first validation.
    progress : bool
        Show a progress bar with the live loss (default True).
    """

    epochs: int = attrs.field(default=50, validator=attrs_validator(check_int, minimum=1))
    time_budget: float | None = attrs.field(default=None, validator=_optional_positive)
    batch_size: int = attrs.field(default=64, validator=attrs_validator(check_int, minimum=1))
    learning_rate: float = attrs.field(default=1e-3, validator=attrs_validator(check_float, positive=True))
    final_lr_fraction: float = attrs.field(default=0.01, validator=attrs_validator(check_float, positive=True, maximum=1.0))
    warmup_fraction: float = attrs.field(default=0.02, validator=attrs_validator(check_float, nonnegative=True, maximum=1.0))
    weight_decay: float = attrs.field(default=0.0, validator=_check_weight_decay)
    grad_clip: float | None = attrs.field(default=None, validator=_optional_positive)
    eval_every: int = attrs.field(default=1, validator=attrs_validator(check_int, minimum=0))
    eval_interval: float | None = attrs.field(default=None, validator=_optional_positive)
    checkpoint_every: int | None = attrs.field(default=None, validator=_optional_count)
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    validation: float = attrs.field(default=0.0, validator=_check_validation)
    patience: int | None = attrs.field(default=None, validator=_check_patience)
    best_metric: str = attrs.field(default=BEST_METRIC, validator=_check_metric_name)
    progress: bool = True
    checkpoint_interval: float | None = attrs.field(default=60.0, validator=_optional_positive)
    eval_overhead: float | None = attrs.field(default=0.1, validator=_optional_positive)

    def learning_rate_at(self, fraction: float) -> float:
        """The learning rate after ``fraction`` (0..1) of the budget: warm-up, then cosine decay."""
        fraction = min(max(fraction, 0.0), 1.0)
        if self.warmup_fraction > 0 and fraction < self.warmup_fraction:
            return self.learning_rate * (fraction / self.warmup_fraction)
        p = (fraction - self.warmup_fraction) / max(1.0 - self.warmup_fraction, 1e-12)
        low = self.final_lr_fraction
        return self.learning_rate * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * p)))


@attrs.define
class History:
    """What happened, one record per epoch: ``epoch``, ``step``, ``seconds`` (training time),
    ``lr``, ``loss`` (mean training objective over the epoch), ``losses`` (per term) and, when
    evaluated, ``test`` (every metric's numbers by name, e.g. ``rmse``) and, with a validation
    set, ``validation`` (the same metrics on it)."""

    records: list = attrs.field(factory=list)
    finished: bool = False

    @property
    def last_test(self) -> dict | None:
        for r in reversed(self.records):
            if "test" in r:
                return r["test"]
        return None


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero inside the block (late training steps on CPU run 3-5x
    faster), then restore the previous mode (probed: torch has no getter)."""
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    was_on = bool((tiny * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


class Trainer:
    """Trains ``model`` on ``train`` with ``objective``: one loop whatever the objective.

    Parameters
    ----------
    model : nn.Module
        Built e.g. by :func:`manifoldtrain.nn.build_model`; batches are moved to its device
        and dtype.
    objective : Objective
    train : JetDataset or DataSource
        Training jets, of at least the objective's order (:attr:`Objective.max_order`): in
        memory, or a :class:`~manifoldtrain.data.sources.DataSource` (a sharded cache, data
        computed on the fly, your own) read batch by batch.
    test : JetDataset, optional
        Scored by ``metrics`` every ``config.eval_every`` epochs and at the end.
    config : TrainConfig
        With ``config.validation > 0``, that fraction of ``train`` is held out as
        :attr:`validation` (chosen by ``config.seed``) and :attr:`train` is the rest.
    checkpoint_dir : path, optional
        Where checkpoints, ``best.pt`` and ``metrics.csv`` go (none are written without it).
    extra : dict, optional
        JSON-able data stored in checkpoints (e.g. how to rebuild the model).
    metrics : sequence of callables
        Each ``metric(model, test) -> dict[str, float | None]``
        (:class:`~manifoldtrain.evaluation.Metric`); their numbers go to the history's
        ``test`` records. Default: :class:`~manifoldtrain.evaluation.JetRMSE`.
    rows_fn : callable
        The network's jet rows: :func:`~manifoldtrain.network_jets.taylor_rows` (default) or
        :func:`~manifoldtrain.network_jets.nested_jvp_rows`.
    distributed : DistributedContext, optional
        The processes that train this model together
        (:meth:`~manifoldtrain.distributed.DistributedContext.from_environment` under
        ``torchrun``); default: this process alone. With several processes, making the
        trainer, :meth:`fit`, :meth:`resume` and :meth:`step` are collectives (every process
        calls them), the model must be on the context's device, and ``model`` is overwritten
        with rank 0's parameters.
    prefetch : int
        With a :class:`~manifoldtrain.data.sources.DataSource`: batches read ahead in a background
        thread while the current step computes (default 1; 0 reads each batch when it is
        needed). Changes nothing but the speed.

    Notes
    -----
    In-memory training jets are truncated to the objective's order and put in scaled
    coordinates (:meth:`LossScales.scale_jet`) once, here, and moved to the model's device;
    :meth:`batch` gathers from them (or, for a source, reads the batch and scales it) and
    :meth:`step` takes one optimiser step on a batch. :meth:`fit` is the loop around them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        train: JetDataset | DataSource,
        test: JetDataset | None = None,
        config: TrainConfig = TrainConfig(),
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        extra: dict | None = None,
        metrics: Sequence[Callable] = (JetRMSE(),),
        rows_fn: Callable = taylor_rows,
        distributed: DistributedContext | None = None,
        prefetch: int = 1,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective: expected an Objective, got {type(objective).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if distributed is not None and not isinstance(distributed, DistributedContext):
            raise TypeError(f"distributed: expected a DistributedContext or None, got {type(distributed).__name__}")
        param = next(iter(model.parameters()), None)
        if param is None:
            raise ValueError("model: it has no parameters to train")
        if distributed is None:
            distributed = DistributedContext.single(param.device)
        elif distributed.backend == "nccl" and param.device != distributed.device:
            raise ValueError(f"model: it is on {param.device}, but this process trains on {distributed.device} "
                             f"(rank {distributed.rank}, backend nccl); move it there first")
        self.distributed = distributed
        self.model = model
        self.objective = objective
        self.prefetch = check_int("prefetch", prefetch, minimum=0)
        if type(train) is InMemorySource:  # the data set itself: the fast path
            train = train.dataset
        if isinstance(train, DataSource):
            self._source: DataSource | None = _check_source(train, objective.max_order, config)
            self.train, self.validation = _hold_out_source(train, config.validation, config.seed)
            self._source = self.train
        elif isinstance(train, JetDataset):
            self._source = None
            train = check_dataset("train", train, order=objective.max_order)
            self.train, self.validation = _hold_out(train, config.validation, config.seed)
        else:
            raise TypeError(f"train: expected a JetDataset or a DataSource, got {type(train).__name__}")
        self.test = check_dataset("test", test) if test is not None else None
        if self.test is not None:
            _check_alike(self.train, self.test)
        self.metrics = tuple(metrics)
        for m in self.metrics:
            if not callable(m):
                raise TypeError(f"metrics: expected callables (model, data) -> dict, got {type(m).__name__}")
            for data in (self.test, self.validation):
                if data is not None and callable(getattr(m, "check", None)):
                    m.check(model, data)
        if rows_fn is taylor_rows and objective.max_order >= 1:
            check_jet_model(model)
        self.rows_fn = rows_fn
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        #: The run's files: checkpoint, best model, metrics table (:class:`~manifoldtrain.checkpoints.RunFiles`).
        self.files = RunFiles(self.checkpoint_dir)
        self.extra = dict(extra or {})
        order = objective.max_order
        if self._source is None:
            self.scales = LossScales.from_data(self.train.inputs, self.train.targets)
            if distributed.is_distributed:
                self.scales = self._agree_on_data(self.scales)
        else:
            # One pass over the data (or a calibration sample), on rank 0 only: the others get its result.
            self.scales = distributed.run_on_main(self._source.statistics)
            if not isinstance(self.scales, LossScales) or self.scales.order < order:
                raise ValueError(f"train: {type(self._source).__name__}.statistics() must return LossScales of "
                                 f"order >= {order}, got {self.scales!r}")
            if distributed.is_distributed:
                self._agree_on_data(self.scales)
        self.normalisers = objective.normalisers(self.scales)
        self.device, self.dtype = param.device, param.dtype
        if self._source is None:
            # Scaled once, on the model's device: every step gathers from these.
            self._train_inputs = self.scales.scale_jet(self.train.inputs.truncate(order)).to(device=self.device)
            self._train_targets = self.scales.scale_jet(self.train.targets.truncate(order)).to(device=self.device)
        else:
            # Read batch by batch (pinned for a fast copy to a GPU), then scaled on the model's device.
            self._train_inputs = self._train_targets = None
        #: Reads a source's batches (:class:`~manifoldtrain.feed.SourceFeed`); None for data in memory.
        self.feed = (SourceFeed(self._source, order, self.scales, self.device, self.dtype, self.prefetch)
                     if self._source is not None else None)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        #: Orders the batches (identical on every process); with one process it also draws
        #: the random directions, as it always has.
        self.generator = torch.Generator().manual_seed(config.seed)
        self._rank_generator: torch.Generator | None = None
        if distributed.is_distributed:
            self._reseed_directions(0)
            distributed.broadcast_parameters(model)
        self.history = History()
        self.epoch = 0
        self.steps = 0
        self.seconds = 0.0
        #: Seconds this process spent in :meth:`step`'s gradient all-reduce (waiting for the
        #: slowest process included) and the steps they cover, since this Trainer was made (not
        #: checkpointed); both stay 0 on one process. On CUDA the time is the host's, up to the
        #: synchronisation that reads the summed losses back.
        self.communication_seconds = 0.0
        self.communication_steps = 0
        #: Seconds spent in test evaluations (checkpointed: :attr:`TrainConfig.eval_overhead`
        #: weighs them against :attr:`seconds`), and seconds spent writing checkpoints (by
        #: this Trainer, not checkpointed): the time outside training steps that the run's
        #: settings choose.
        self.evaluation_seconds = 0.0
        self.checkpoint_seconds = 0.0
        #: The best model on the validation set and early stopping (:class:`~manifoldtrain.selection.BestModel`).
        self.selection = BestModel(config.best_metric, config.patience)
        self._bar_by_time = False
        self._last_checkpoint = time.monotonic()

    @property
    def direction_generator(self) -> torch.Generator:
        """The generator of this process's random directions: :attr:`generator` for one
        process; with several, one of each process's own, reseeded at every epoch by
        :func:`~manifoldtrain.distributed.direction_seed`."""
        return self.generator if self._rank_generator is None else self._rank_generator

    def _reseed_directions(self, epoch: int) -> None:
        ctx = self.distributed
        self._rank_generator = torch.Generator().manual_seed(direction_seed(self.config.seed, ctx.rank, epoch))

    def _agree_on_data(self, scales: LossScales) -> LossScales:
        """Check that every process holds the same training data; returns rank 0's scales."""

        def differ(first: dict, theirs: dict, rank: int) -> str | None:
            diff = first_difference({k: v for k, v in first.items() if k != "scales"},
                                    {k: v for k, v in theirs.items() if k != "scales"}, "train",
                                    ("on rank 0", f"on rank {rank}"))
            if diff is None and not _close_scales(first["scales"], theirs["scales"]):
                diff = (f"train: loss scales {plain(first['scales'])} on rank 0, {plain(theirs['scales'])} "
                        f"on rank {rank}")
            return diff

        def message(rank: int, diff: str) -> str:
            return (f"train: every process must train on the same data, but rank {rank} holds other training data "
                    f"than rank 0 ({diff}); give every process the same config, seed and data")

        return self.distributed.agree({**self._data_summary(), "scales": scales}, differ, message)["scales"]

    def _data_summary(self) -> dict:
        """What every process must agree on about the training data."""
        if self._source is None:
            t = self.train
            return {"n_train": len(t), "fingerprint": t.meta.get("fingerprint"), "inputs": list(t.inputs.shape),
                    "targets": list(t.targets.shape), "order": t.inputs.order}
        s = self._source
        return {"n_train": len(s), "fingerprint": s.fingerprint, "inputs": list(s.input_shape),
                "targets": list(s.target_shape), "order": s.order}

    @property
    def source(self) -> DataSource | None:
        """The training data's :class:`~manifoldtrain.data.sources.DataSource` (after holding out
        a validation set), or None for a ``JetDataset`` in memory."""
        return self._source

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.config.batch_size)

    @property
    def checkpoint_path(self) -> Path | None:
        """Where the checkpoint goes (``checkpoint_dir/checkpoint.pt``), or None without a checkpoint directory."""
        return self.files.checkpoint_path

    @property
    def best_path(self) -> Path | None:
        """Where the best model goes (``checkpoint_dir/best.pt``), or None without a checkpoint directory."""
        return self.files.best_path

    @property
    def metrics_path(self) -> Path | None:
        """Where the metrics of every evaluation go (``checkpoint_dir/metrics.csv``)."""
        return self.files.metrics_path

    @property
    def best(self) -> dict | None:
        """The best model so far (lowest validation ``best_metric``): ``epoch``, ``step``, ``seconds``,
        ``metric``, ``value``, ``validation`` (every metric) and ``model`` (its weights, on the
        CPU); None before the first evaluation or without a validation set."""
        return self.selection.best

    @property
    def since_best(self) -> int:
        """Evaluations since the best one (early stopping ends the run at ``config.patience``)."""
        return self.selection.since_best

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping has ended the run (``config.patience`` evaluations without improvement)."""
        return self.selection.stopped_early

    def _identity(self) -> dict:
        """Every setting that shapes the weights: what a resumed run must share with its checkpoint."""
        return {
            "train_config": {k: v for k, v in plain(self.config).items() if k not in _NOT_IDENTITY},  # they change no weights
            "objective": plain(self.objective),
            "data_fingerprint": (self.train.meta.get("fingerprint") if self._source is None
                                 else self._source.fingerprint),
            "n_train": len(self.train),
            # the run's own settings (a run's model config, seed, data, manifold) before the modules
            # they build: a refused resume names the setting that differs, not the repr it changed
            "extra": plain(self.extra),
            "model_architecture": {
                "layers": repr(self.model),
                "parameters": {k: list(v.shape) for k, v in self.model.state_dict().items()},
                "dtype": str(self.dtype),
            },
        }

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (plain data, ``weights_only``-loadable)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.steps,
            "seconds": self.seconds,
            "evaluation_seconds": self.evaluation_seconds,
            "world_size": self.distributed.world_size,
            "history": {"records": self.history.records, "finished": self.history.finished},
            "best": self.best,
            "since_best": self.since_best,
            "scales": plain(self.scales),
            "normalisers": dict(self.normalisers),
            "extra": self.extra,
            **self._identity(),
        }

    def best_state_dict(self) -> dict:
        """The best model so far as a checkpoint of its epoch (what ``best.pt`` holds): the
        checkpoint's format, with the best weights, that epoch's counters and history, and
        ``kind = "best"``; no optimiser or generator (it is not a run to resume)."""
        if self.best is None:
            raise ValueError("best: no best model yet (it needs a validation set and an evaluation)")
        state = self.state_dict()
        del state["optimizer"], state["generator"], state["since_best"]
        best = self.best
        records = [r for r in self.history.records if r["epoch"] <= best["epoch"]]
        state.update(
            kind="best", model=best["model"], epoch=best["epoch"], step=best["step"], seconds=best["seconds"],
            history={"records": records, "finished": False}, best={k: v for k, v in best.items() if k != "model"},
        )
        return state

    def save_best(self) -> Path:
        """Write ``best.pt`` atomically from :attr:`best`; returns its path."""
        return self.files.save_best(self.best_state_dict())

    def write_metrics(self) -> Path:
        """Rewrite ``metrics.csv`` atomically from the history (one row per evaluation); returns its path."""
        return self.files.write_metrics(self.history.records, terms=self.objective.names)

    def save_checkpoint(self) -> Path:
        """Write the checkpoint atomically; returns its path."""
        started = time.perf_counter()
        try:
            return self.files.save_checkpoint(self.state_dict())
        finally:
            self.checkpoint_seconds += time.perf_counter() - started
            self._last_checkpoint = time.monotonic()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint of the same run: the same configs, objective, data, model
        architecture and ``extra`` (e.g. the model's config and seed); otherwise a
        ``ValueError`` names the first setting that differs. Loaded weights must be finite."""
        if state.get("kind") == "best":
            raise ValueError(f"checkpoint: it is a best-model file ({BEST_NAME}), which cannot be resumed; resume from "
                             f"{CHECKPOINT_NAME}")
        diff = refused_resume(state, self._identity(), older=_OLDER_IDENTITY)
        if diff is not None:
            # a run's settings by the names of its config: extra.model_spec.model.activation -> model.activation
            for prefix, name in (("extra.model_spec.model.", "model."), ("extra.model_spec.", "model "),
                                 ("extra.model_seed", "model_seed"), ("extra.", "")):
                if diff.startswith(prefix):
                    diff = name + diff[len(prefix):]
                    break
            raise ValueError(
                f"checkpoint: it belongs to a run with other settings ({diff}); resume with the same settings, "
                "start over (--no-resume, or resume=False), or use a new folder"
            )
        bad = [k for k, v in state["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"checkpoint: its weights {bad[:3]} hold NaN or inf; start over (--no-resume) or use a new folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch, self.steps, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.evaluation_seconds = float(state.get("evaluation_seconds", 0.0))
        self.history = History(list(state["history"]["records"]), bool(state["history"]["finished"]))
        self.selection.best = state.get("best")
        self.selection.since_best = int(state.get("since_best", 0))

    def resume(self) -> bool:
        """Load the checkpoint in ``checkpoint_dir`` if there is one (see :meth:`load_state_dict`)
        and say so; returns whether it did. With several processes rank 0 reads the file and
        hands its contents to the others (only rank 0's machine needs to see the folder), and
        rank 0's parameters are broadcast after loading."""
        ctx = self.distributed
        state = ctx.run_on_main(self.files.read_checkpoint)
        if state is None:
            return False
        try:
            self.load_state_dict(state)
        except ValueError as err:  # every process holds the same state, so every one refuses it
            mark_agreed(err)
            raise
        if ctx.is_distributed:
            ctx.broadcast_parameters(self.model)
        # best.pt and metrics.csv may be ahead of the checkpoint (written at a later evaluation
        # before the run stopped): make them agree with it again.
        if ctx.is_main:
            if self.best is not None:
                self.save_best()
            self.write_metrics()
        cfg = self.config
        budget = f"{cfg.epochs} epochs" + (f" or {cfg.time_budget:g} s" if cfg.time_budget is not None else "")
        written = state.get("world_size", 1)
        by = f", written by {written} processes" if written != 1 else ""
        _log(f"resuming from epoch {self.epoch} ({self.seconds:.1f} s of training{by}) of {budget}: "
             f"{self.checkpoint_path}", cfg.progress and ctx.is_main)
        return True



    def progress(self) -> float:
        """The fraction of the training budget spent (0..1): steps or seconds, whichever is further."""
        cfg = self.config
        frac = self.steps / (cfg.epochs * self.steps_per_epoch)
        if cfg.time_budget is not None:
            frac = max(frac, self.seconds / cfg.time_budget)
        return frac

    def _out_of_budget(self) -> bool:
        cfg = self.config
        return (self.epoch >= cfg.epochs or (cfg.time_budget is not None and self.seconds >= cfg.time_budget)
                or self.stopped_early)

    def batch(self, indices: torch.Tensor) -> tuple[Jet, Jet]:
        """The training samples at ``indices`` (``[b]`` long), scaled, on the model's device and
        dtype, of the objective's order: what :meth:`step` takes. (A source is asked for
        the samples of the current epoch, :attr:`epoch`.)"""
        if self.feed is not None:
            return self.feed.batch(indices, self.epoch)
        indices = indices.to(self._train_inputs.device)
        x = self._train_inputs[indices].to(device=self.device, dtype=self.dtype)
        y = self._train_targets[indices].to(device=self.device, dtype=self.dtype)
        return x, y

    def step(self, batch: tuple[Jet, Jet], *, global_size: int | None = None) -> dict[str, float]:
        """One optimiser step on ``batch`` (from :meth:`batch`): learning rate from the
        schedule, the objective's losses, backward, gradient clipping, AdamW.

        Returns each term's weighted loss. Raises ``FloatingPointError`` naming the step and
        the terms if the loss is NaN or infinite (the weights are then left unchanged).

        With several processes (``distributed``) this is a collective: ``batch`` is this
        process's shard (possibly empty) of a global batch of ``global_size`` samples, the
        gradients are summed over the processes with weights shard / ``global_size``, and
        the returned losses are the global batch's. With one process ``global_size`` is the
        batch's size or None.
        """
        x, y = batch
        if self.distributed.is_distributed:
            if global_size is None:
                raise ValueError(f"global_size: training on {self.distributed.world_size} processes, each step needs "
                                 "the size of the global batch that this batch is a shard of")
            check_int("global_size", global_size, minimum=max(len(x), 1))
            return self._distributed_step(x, y, global_size)
        if global_size is not None and global_size != len(x):
            raise ValueError(f"global_size: one process holds the whole batch of {len(x)} samples; expected "
                             f"{len(x)} or None, got {global_size!r}")
        cfg = self.config
        fraction = self.progress()
        lr = cfg.learning_rate_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.objective.losses(
            self.model, x, y, self.scales, generator=self.generator, rows_fn=self.rows_fn, progress=fraction,
            scaled=True, normalisers=self.normalisers,
        )
        loss = sum(losses.values())
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(self._non_finite_message(losses))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _distributed_step(self, x: Jet, y: Jet, global_size: int) -> dict[str, float]:
        """:meth:`step` on this process's shard ``x, y`` of a global batch of ``global_size``."""
        ctx, cfg = self.distributed, self.config
        fraction = self.progress()
        lr = cfg.learning_rate_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        names = self.objective.names
        weight = len(x) / global_size
        self.optimizer.zero_grad(set_to_none=True)
        if len(x) > 0:
            losses = self.objective.losses(
                self.model, x, y, self.scales, generator=self.direction_generator, rows_fn=self.rows_fn,
                progress=fraction, scaled=True, normalisers=self.normalisers,
            )
            loss = sum(losses.values())
            if bool(torch.isfinite(loss.detach())):  # else no backward: every process stops below
                loss.backward()
            local = torch.stack([losses[k].detach().to(torch.float64) for k in names]) * weight
        else:  # a global batch smaller than the number of processes: nothing to do here but agree
            local = torch.zeros(len(names), dtype=torch.float64)
        started = time.perf_counter()
        totals = ctx.all_reduce_gradients(self.model, weight, local)
        if ctx.is_distributed:
            self.communication_seconds += time.perf_counter() - started
            self.communication_steps += 1
        global_losses = dict(zip(names, totals.tolist()))
        if not math.isfinite(sum(global_losses.values())):
            self.optimizer.zero_grad(set_to_none=True)
            err = FloatingPointError(self._non_finite_message(global_losses))
            mark_agreed(err)
            raise err
        if cfg.grad_clip is not None:  # on the summed gradients, identical on every process
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return global_losses

    def _non_finite_message(self, losses: dict[str, torch.Tensor | float]) -> str:
        """Which terms went NaN or infinite, and the remedy that fits the cause."""
        losses = {k: float(v) for k, v in losses.items()}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        where = f"at epoch {self.epoch + 1}, step {self.steps + 1}"
        tiny = [k for k in bad if self.normalisers[k] < 1e-12 * max(self.normalisers.values())]
        if tiny:
            hint = (f"the normaliser of {tiny[0]!r} is {self.normalisers[tiny[0]]:.3g}, tiny against the other terms': "
                    "set that term's scale by hand")
        elif self.steps == 0:
            hint = "the very first step: check the training data and the model's initial weights for NaN or inf"
        else:
            hint = "lower the learning rate or clip gradients (grad_clip)"
        terms = ", ".join(f"{k!r} = {v}" for k, v in bad.items())
        return f"loss: term {terms} became non-finite {where} (all terms {losses}); {hint}"

    def evaluate(self, data: JetDataset | None = None) -> dict[str, float | None]:
        """Every metric's numbers on ``data`` (default: the test data), by name (empty
        without test data)."""
        out: dict[str, float | None] = {}
        data = self.test if data is None else data
        if data is None:
            return out
        for metric in self.metrics:
            values = check_metric_values(metric, metric(self.model, data))
            clash = sorted(set(values) & set(out))
            if clash:
                raise ValueError(f"metrics: more than one metric reports {clash}; names must be unique")
            out.update(values)
        return out

    def fit(self, *, resume: bool = True) -> History:
        """Train until the epoch or time budget is spent; returns the history.

        With ``resume`` and an existing checkpoint in ``checkpoint_dir``, continue from it.
        Raises ``FloatingPointError`` naming the step and the terms if the loss becomes NaN or
        infinite. With several processes every process calls it; an error on one of them is
        reported as that rank's failure and ends the process group
        (:meth:`~manifoldtrain.distributed.DistributedContext.failure_guard`), so the others
        stop too.
        """
        with flush_denormals(), self.distributed.failure_guard():
            try:
                return self._fit(resume)
            finally:
                if self.feed is not None:
                    self.feed.close()

    def _fit(self, resume: bool) -> History:
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        cfg = self.config
        ctx = self.distributed
        show = cfg.progress and ctx.is_main
        writes = ctx.is_main  # only rank 0 writes files
        if ctx.is_distributed:
            per, rest = divmod(min(cfg.batch_size, len(self.train)), ctx.world_size)
            share = f"{per + 1} or {per}" if rest else f"{per}"
            _log(f"training on {ctx.describe()}: global batch {cfg.batch_size}, {share} samples per process", show)
        total_steps = cfg.epochs * self.steps_per_epoch
        by_time = cfg.time_budget is not None and cfg.time_budget < total_steps * 1e-3  # a step takes >~1 ms
        if by_time:  # the budget that ends first: advance in training seconds
            bar = tqdm(total=round(cfg.time_budget, 1), initial=round(min(self.seconds, cfg.time_budget), 1), unit="s",
                       desc=", ".join(self.objective.names), disable=not show, leave=False, dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        else:
            bar = tqdm(total=total_steps, initial=min(self.steps, total_steps), desc=", ".join(self.objective.names),
                       unit="step", disable=not show, leave=False, dynamic_ncols=True)
        self._bar_by_time = by_time
        self._last_checkpoint = time.monotonic()
        try:
            while not self._out_of_budget():
                self._train_epoch(bar)
                due_eval = bool(cfg.eval_every) and self.epoch % cfg.eval_every == 0
                if cfg.eval_interval is not None:
                    last = max((r["seconds"] for r in self.history.records[:-1] if evaluated(r)), default=0.0)
                    due_eval = due_eval or self.seconds - last >= cfg.eval_interval
                due_eval = due_eval or self._out_of_budget()
                run_test = self.test is not None and due_eval and (
                    self._out_of_budget() or cfg.eval_overhead is None
                    or self.evaluation_seconds <= cfg.eval_overhead * self.seconds)
                if ctx.is_distributed and due_eval and self.test is not None:  # rank 0's clock decides, for all
                    run_test = ctx.broadcast_object(run_test)
                if run_test or (self.validation is not None and due_eval):
                    record = self.history.records[-1]
                    shown = {}
                    # Every process evaluates (in parallel: nobody waits); rank 0's numbers
                    # decide, so that the best model and early stopping agree everywhere.
                    started = time.perf_counter()
                    test = self.evaluate() if run_test else None
                    self.evaluation_seconds += time.perf_counter() - started
                    validation = self.evaluate(self.validation) if self.validation is not None else None
                    if ctx.is_distributed:
                        test, validation = ctx.broadcast_object((test, validation))
                    if test is not None:
                        record["test"] = test
                        shown = {k: f"{v:.2e}" for k, v in record["test"].items() if v is not None}
                    if validation is not None:
                        record["validation"] = validation
                        self._track_best(record)
                        name = cfg.best_metric
                        shown = {f"val_{name}": f"{record['validation'][name]:.2e}", **shown}
                    bar.set_postfix(loss=f"{record['loss']:.3e}", **dict(list(shown.items())[:2]))
                    if self.metrics_path is not None and writes:
                        self.write_metrics()
                self.history.finished = self._out_of_budget()
                if self.checkpoint_path is not None and writes and self._checkpoint_due():
                    self.save_checkpoint()
        finally:
            bar.close()
        self.history.finished = True
        if self.metrics_path is not None and writes:
            self.write_metrics()
        return self.history

    def _checkpoint_due(self) -> bool:
        """Whether to write a checkpoint at the end of this epoch: at the end of training, every
        ``checkpoint_every`` epochs, and once ``checkpoint_interval`` seconds have passed since the last."""
        cfg = self.config
        return (self.history.finished
                or (cfg.checkpoint_every is not None and self.epoch % cfg.checkpoint_every == 0)
                or (cfg.checkpoint_interval is not None
                    and time.monotonic() - self._last_checkpoint >= cfg.checkpoint_interval))

    def _track_best(self, record: dict) -> None:
        """After a validation: keep the model if it is the best so far (and write ``best.pt``,
        before the checkpoint that records it), else count one more evaluation without improvement."""
        improved = self.selection.observe(record["validation"], self.model, epoch=self.epoch, step=self.steps,
                                          seconds=self.seconds)
        if improved and self.best_path is not None and self.distributed.is_main:
            self.save_best()

    def _train_epoch(self, bar) -> None:
        cfg = self.config
        ctx = self.distributed
        self.model.train()
        perm = torch.randperm(len(self.train), generator=self.generator)
        if ctx.is_distributed:
            self._reseed_directions(self.epoch)
        sums: dict[str, float] = {}
        count = 0
        ahead = None if self.feed is None else self.feed.epoch(
            perm, self.epoch, cfg.batch_size, self.steps_per_epoch, ctx.shard if ctx.is_distributed else None)
        try:
            for b in range(self.steps_per_epoch):
                if cfg.time_budget is not None and self.seconds >= cfg.time_budget:
                    break
                t0 = time.perf_counter()
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                if ctx.is_distributed:
                    batch = self.batch(ctx.shard(idx)) if ahead is None else ahead.get(b)
                    losses = self.step(batch, global_size=len(idx))
                    self.seconds += time.perf_counter() - t0
                    if cfg.time_budget is not None:  # every process stops at the same step
                        self.seconds = ctx.agree_elapsed(self.seconds)
                else:
                    losses = self.step(self.batch(idx) if ahead is None else ahead.get(b))
                    self.seconds += time.perf_counter() - t0
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                count += len(idx)
                bar.update(round(min(self.seconds, bar.total), 1) - bar.n if self._bar_by_time else 1)
                if b % 10 == 0:
                    bar.set_postfix(loss=f"{sum(losses.values()):.3e}",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.1e}", refresh=False)
        finally:
            if ahead is not None:
                ahead.close()
        self.epoch += 1
        if ctx.is_distributed:  # the schedule, evaluations and the records see one clock
            self.seconds = ctx.agree_elapsed(self.seconds)
        losses_mean = {k: v / max(count, 1) for k, v in sums.items()}
        self.history.records.append(
            {
                "epoch": self.epoch,
                "step": self.steps,
                "seconds": self.seconds,
                "lr": self.optimizer.param_groups[0]["lr"],
                "loss": sum(losses_mean.values()),
                "losses": losses_mean,
            }
        )


def _check_source(source: DataSource, order: int, config: TrainConfig) -> DataSource:
    """Check a training source before any work: its size, its order, and that a validation
    set can be held out of it."""
    n = len(source)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"train: expected a source of at least one sample, got len {n!r}")
    if source.order < order:
        raise ValueError(f"train: expected jets of order >= {order}, got order {source.order}")
    if config.validation > 0 and source.unlimited and type(source).hold_out is DataSource.hold_out:
        raise ValueError(f"config.validation: {type(source).__name__} draws new samples every epoch, so none can be "
                         "held out of its training data; set validation = 0, or give the source a hold_out method")
    return source


def _hold_out_source(source: DataSource, fraction: float, seed: int) -> tuple[DataSource, JetDataset | None]:
    """``(train, validation)`` of a source: ``fraction`` of its samples (of an epoch) held out,
    at least one, by :meth:`DataSource.hold_out`."""
    if fraction == 0:
        return source, None
    n_val = max(1, round(fraction * len(source)))
    if len(source) - n_val < 1 and not source.unlimited:
        raise ValueError(f"config.validation: holding out {fraction:g} of {len(source)} training samples leaves none "
                         "to train on; lower it or use more data")
    rest, held = source.hold_out(n_val, seed)
    if not isinstance(rest, DataSource) or not isinstance(held, JetDataset):
        raise TypeError(f"train: {type(source).__name__}.hold_out must return (DataSource, JetDataset), got "
                        f"({type(rest).__name__}, {type(held).__name__})")
    return rest, held


def _close_scales(a: LossScales, b: LossScales, rtol: float = 1e-6) -> bool:
    """Whether two processes' loss scales agree (to ``rtol``: machines may round differently)."""
    pairs = [(getattr(a, f), getattr(b, f)) for f in ("coordinate", "energy", "input_energy")]
    return all(len(x) == len(y) and all(math.isclose(u, v, rel_tol=rtol, abs_tol=0.0) for u, v in zip(x, y))
               for x, y in pairs)


def _hold_out(train: JetDataset, fraction: float, seed: int) -> tuple[JetDataset, JetDataset | None]:
    """``(train, validation)``: ``fraction`` of ``train`` held out (at least one sample), chosen by ``seed``."""
    if fraction == 0:
        return train, None
    n_val = max(1, round(fraction * len(train)))
    if len(train) - n_val < 1:
        raise ValueError(f"config.validation: holding out {fraction:g} of {len(train)} training samples leaves none to "
                         "train on; lower it or use more data")
    rest, held = train.split(n_val, seed)  # a generator of its own: the batch order's is untouched
    return rest, held


def _log(message: str, show: bool) -> None:
    if show:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _check_alike(train: JetDataset | DataSource, test: JetDataset) -> None:
    """Test data must have the training data's shapes (and coordinates, where it has any)."""
    for what in ("inputs", "targets"):
        b = getattr(test, what)
        if isinstance(train, DataSource):
            shape = tuple(train.input_shape if what == "inputs" else train.target_shape)
            dim = train.param_dim
        else:
            a = getattr(train, what)
            shape, dim = a.shape, a.param_dim
        if shape != b.shape:
            raise ValueError(f"test: its {what} have shape {list(b.shape)}, the training data {list(shape)}")
        # A value-only (order-0) set has no coordinates and is fine: it is scored on values.
        if None not in (dim, b.param_dim) and dim != b.param_dim:
            raise ValueError(f"test: its {what} have {b.param_dim} local coordinates, the training data {dim}")
