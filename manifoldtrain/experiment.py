"""Runs: data -> model -> trainer -> evaluation -> results, from one :class:`ExperimentConfig`."""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from manifoldtrain._io import LOCK, claim_output_folder, foreign_names, release_if_unused, unlock_path
from manifoldtrain._plain import first_difference
from manifoldtrain._validation import dtype_from_name
from manifoldtrain.checkpoints import PREVIOUS_NAME
from manifoldtrain.config import ExperimentConfig, config_to_dict, save_config
from manifoldtrain.data import JetDataset, manifold_description
from manifoldtrain.data.sources import DataRequest, DataSource
from manifoldtrain.devices import check_device, device_argument  # re-exported: public here before
from manifoldtrain.distributed import DistributedContext
from manifoldtrain.evaluation import JetRMSE, Metrics, evaluate
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import target_names
from manifoldtrain.network_jets import network_jet
from manifoldtrain.nn import build_model
from manifoldtrain.records import command_line, machine_info, write_json  # the first two re-exported: public here before
from manifoldtrain.registry import MODELS, SOURCES
from manifoldtrain.testing import verify_manifold
from manifoldtrain.training import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, Trainer, load_checkpoint

#: The files a run writes into its folder (besides its marker).
RUN_OUTPUTS = ("config.toml", "results.json", "curves.png", CHECKPOINT_NAME, BEST_NAME, METRICS_NAME,
               # written into a run folder by `manifoldtrain robustness` (--run, and the comparison's runs)
               "robustness.json", "worst_case.png", "robustness_eval.json")

__all__ = ["RUN_OUTPUTS", "make_data", "run_experiment", "model_from_checkpoint", "evaluate_checkpoint", "machine_info",
           "command_line", "check_device", "device_argument", "using_device", "run_checkpoint"]

_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("manifoldtrain_device", default=None)


@contextlib.contextmanager
def using_device(device: str | torch.device | None) -> Iterator[None]:
    """Inside the block, :func:`run_experiment` called without ``device`` trains on ``device``
    (checked by :func:`check_device`; ``None`` changes nothing). For callers that run
    experiments through code that does not pass a device on, such as the demo."""
    token = _DEVICE.set(check_device(device) if device is not None else _DEVICE.get())
    try:
        yield
    finally:
        _DEVICE.reset(token)


def run_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file that holds a run's model: ``path`` itself if it is a file; for a run
    folder its ``best.pt`` (the model of lowest validation ``best_metric``) where it has one, else its
    ``checkpoint.pt`` (the last model). Raises ``FileNotFoundError`` if there is neither."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"path: no run folder or checkpoint file at {path}")
        return path
    for name in (BEST_NAME, CHECKPOINT_NAME):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"path: {path} holds no checkpoint ({CHECKPOINT_NAME}); "
                            "is it a run folder written by 'train'?")


#: Training samples from which a model's input and output normalisation is computed when the
#: training data are a :class:`~manifoldtrain.data.sources.DataSource` (the first ones; all of a
#: smaller set, which then gives the model of the same data in memory).
NORMALISATION_SAMPLES = 2048


def make_data(config: ExperimentConfig, *, progress: bool = True) -> tuple[JetDataset | DataSource, JetDataset]:
    """The training and test data of ``config``: ``(train, test)``.

    With ``data.source = "memory"`` (the default) both are :class:`JetDataset` in memory
    (cached if ``config.data.cache_dir`` is set); otherwise ``train`` is a
    :class:`~manifoldtrain.data.sources.DataSource` (a sharded cache, data computed on the fly, a
    source of your own; see :class:`~manifoldtrain.config.DataConfig`) and ``test`` a fixed
    :class:`JetDataset`.

    Jets are generated up to the order needed: the objective's, or ``data.test_order`` if
    higher (value training generates values only).
    """
    return _make_data(config, progress=progress, write_cache=True)


def _make_data(config: ExperimentConfig, *, progress: bool, write_cache: bool,
               ctx: DistributedContext | None = None,
               device: torch.device | None = None) -> tuple[JetDataset | DataSource, JetDataset]:
    """:func:`make_data`, through the protocol that every source shares
    (:meth:`DataSource.experiment_data <manifoldtrain.data.sources.DataSource.experiment_data>`
    of the class that ``data.source`` names); without ``write_cache`` a missing cache is
    generated but not written (the processes of a distributed run other than rank 0: one
    writer per cache), and a cache to generate is written by ``ctx``'s rank 0 while the others
    wait."""
    verify_manifold(config.manifold, "manifold")  # a user's manifold keeps its contract: before any data
    d = config.data
    request = DataRequest(
        order=max(config.objective.max_order, d.test_order if d.test_order is not None else 0),
        train_order=config.objective.max_order,
        dtype=dtype_from_name("data.dtype", d.dtype),
        compute_dtype=dtype_from_name("data.compute_dtype", d.compute_dtype),
        progress=progress, write_cache=write_cache, device=device,
        **({"run_on_main": ctx.run_on_main} if ctx is not None else {}),
    )
    return SOURCES.get(d.source).experiment_data(config, request)


def _check_model_fits(config: ExperimentConfig) -> None:
    """Build ``config.model`` once for the manifold's declared shapes (two zero samples), before
    any data is made: a network of a user's that takes other inputs or gives another number of
    outputs is refused here (:func:`~manifoldtrain.nn.build_model` checks it), not after the data."""
    manifold = config.manifold
    if len(manifold.target_shape) != 1:
        return  # build_model takes targets [n, m]; the data's own check names the shape
    try:
        build_model(config.model, torch.zeros(2, *manifold.input_shape),
                    torch.zeros(2, manifold.target_shape[0]), seed=config.model_seed)
    except (TypeError, ValueError) as err:
        text = str(err)
        raise type(err)(f"model: {text.removeprefix('config: ')}" if text.startswith("config: ") else text) from None


def _check_source_fits(config: ExperimentConfig, train: JetDataset | DataSource, test: JetDataset) -> None:
    """A data source must give jets of the manifold's shapes: two samples of its first batch
    against the test set (computed from the manifold) and ``param_dim``, before any training.
    Every source is checked the same way, a user's (``data.source = "package.module:ClassName"``)
    and the bundled ones alike (two samples cost little)."""
    if not isinstance(train, DataSource) or not len(train):
        return
    name = f"data.source: {config.data.source}"
    x, y = train.batch(torch.arange(min(2, len(train))), 0)
    d = config.manifold.param_dim
    for what, jet, want in (("inputs", x, test.inputs), ("targets", y, test.targets)):
        if not isinstance(jet, Jet):
            raise TypeError(f"{name}: its batch() must return (inputs, targets) as two Jets, got {type(jet).__name__}")
        if tuple(jet.value.shape[1:]) != tuple(want.shape):
            raise ValueError(f"{name}: its batch() gives {what} {list(jet.value.shape[1:])} per sample; the manifold "
                             f"{type(config.manifold).__name__} (and the test set) has {list(want.shape)}")
        if jet.d1 is not None and jet.d1.shape[1] != d:
            raise ValueError(f"{name}: its batch() gives {what} jets of {jet.d1.shape[1]} coordinates; the manifold "
                             f"has param_dim = {d}")


def _normalisation_data(train: JetDataset | DataSource) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets that a new model's normalisation is computed from: every training
    value in memory; the first :data:`NORMALISATION_SAMPLES` of a source."""
    if isinstance(train, JetDataset):
        return train.inputs.value, train.targets.value
    x, y = train.batch(torch.arange(min(len(train), NORMALISATION_SAMPLES)), 0, 0)
    return x.value.to("cpu"), y.value.to("cpu")


def _data_identity(config: ExperimentConfig) -> dict:
    """The data table of ``config`` as run checkpoints record it (``source = "memory"``, the
    default, left out: checkpoints written before sources existed still resume)."""
    table = config_to_dict(config)["data"]
    if table.get("source") == "memory":
        del table["source"]
    return table


def _model_spec(config: ExperimentConfig, train: JetDataset | DataSource) -> dict:
    table = config_to_dict(config)["model"]
    memory = isinstance(train, JetDataset)
    return {
        "model": table,
        "input_shape": list(train.inputs.shape if memory else train.input_shape),
        "target_shape": list(train.targets.shape if memory else train.target_shape),
        "dtype": config.data.dtype,
    }


def _our_outputs(out: Path) -> list[str]:
    """The run files in ``out`` (:data:`RUN_OUTPUTS`, but for names that a folder forced open
    beside other files held before: those are not ours)."""
    theirs = foreign_names(out)
    return sorted(name for name in set(RUN_OUTPUTS) - theirs if (out / name).is_file())


def _set_aside_previous(out: Path) -> None:
    """A run starting afresh in ``out``: move an earlier run's files into ``out/.previous-run``
    (:data:`~manifoldtrain.checkpoints.PREVIOUS_NAME`), where they stay until the new run has
    written its first checkpoint (:meth:`RunFiles.save_checkpoint
    <manifoldtrain.checkpoints.RunFiles.save_checkpoint>` removes them)."""
    names = _our_outputs(out)
    if not names:
        return
    previous = out / PREVIOUS_NAME
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for name in names:
        os.replace(out / name, previous / name)


def _recover_previous(out: Path) -> Path:
    """After a run that started afresh was stopped: if it wrote no checkpoint, the earlier
    run's files in ``out/.previous-run`` go back in place (with a warning), and the new run's
    unfinished files go; if it did, they are removed. Returns ``out``."""
    previous = out / PREVIOUS_NAME
    if not previous.is_dir():
        return out
    if (out / CHECKPOINT_NAME).is_file():
        shutil.rmtree(previous)
        return out
    for name in _our_outputs(out):
        (out / name).unlink()
    kept = sorted(e.name for e in previous.iterdir() if e.name in RUN_OUTPUTS)
    for name in kept:
        os.replace(previous / name, out / name)
    shutil.rmtree(previous)
    warnings.warn(f"out_dir: a run started afresh in {out} stopped before its first checkpoint; the earlier run's "
                  f"files that it had set aside are back in place ({', '.join(kept)})", stacklevel=5)
    return out


def _final_metrics(trainer: Trainer, model: torch.nn.Module, test: JetDataset, last: dict,
                   names: tuple[str, ...]) -> Metrics:
    """The test metrics of the run's model: those the Trainer computed at the last epoch where
    they are of this very model, by :func:`evaluate` itself (no best model chosen, the default
    metric: the same numbers, so the jets are not computed twice; the outputs' own RMSE from a
    forward pass), else :func:`evaluate`'s."""
    if trainer.best is None and trainer.metrics == (JetRMSE(),) and "test" in last and last["epoch"] == trainer.epoch:
        t = last["test"]
        per_output = evaluate(model, test, order=0, output_names=names).per_output
        return Metrics(t["rmse"], t["rmse_d1"], t["rmse_d2"], len(test),
                       "forward" if test.order == 0 else network_jet.__name__, per_output)
    return evaluate(model, test, output_names=names)


def model_from_checkpoint(state: dict) -> torch.nn.Sequential:
    """Rebuild the trained model stored in a checkpoint written by :func:`run_experiment`."""
    spec = state.get("extra", {}).get("model_spec")
    if spec is None:
        raise ValueError("checkpoint: it does not say how to rebuild its model (no model_spec); was it written by run_experiment?")
    table = dict(spec["model"])
    cls = MODELS.get(table.pop("kind"))
    config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})
    dtype = dtype_from_name("model_spec.dtype", spec["dtype"])
    inputs = torch.zeros(2, *spec["input_shape"], dtype=dtype)
    targets = torch.zeros(2, *spec["target_shape"], dtype=dtype)
    model = build_model(config, inputs, targets)
    model.load_state_dict(state["model"])
    return model


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    data: tuple[JetDataset | DataSource, JetDataset] | None = None,
    progress: bool = True,
    force: bool = False,
    device: str | torch.device | None = None,
    distributed: DistributedContext | None = None,
) -> dict:
    """Train ``config`` into ``out_dir`` and return its results.

    Writes ``out_dir/config.toml``, ``out_dir/checkpoint.pt`` (see :mod:`manifoldtrain.training`),
    ``out_dir/metrics.csv`` (one row per evaluation), with a validation set
    (``config.train.validation > 0``) ``out_dir/best.pt``, and ``out_dir/results.json``:
    ``objective`` (term names), ``test`` (metrics of the model in ``checkpoint``:
    :meth:`Metrics.to_dict <manifoldtrain.evaluation.Metrics.to_dict>`, with ``per_output``, the
    clean RMSE of each target output named by the manifold's ``target_names``, the spread of its
    test targets and their ratio),
    ``checkpoint`` (``"best.pt"``, the model of lowest validation ``best_metric``, with a validation set;
    else ``"checkpoint.pt"``, the last model), ``best_epoch`` and ``validation`` (that model's
    epoch and validation metrics; None without a validation set), ``stopped_early``,
    ``seconds`` (training steps), ``wall_seconds`` (the whole call up to writing
    ``results.json``: data, model, training, evaluations, checkpoints), ``evaluation_seconds``
    (test evaluations during training), ``checkpoint_seconds`` (writing checkpoints, in this
    call), ``epochs``, ``history``; and ``out_dir/curves.png``, the learning curves of
    every term and every recorded test metric. With ``resume``, a run stopped half way
    continues from its last checkpoint. ``data`` may pass ``(train, test)`` directly (``train``
    a :class:`JetDataset` or a :class:`~manifoldtrain.data.sources.DataSource`).

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``; default: the one set by
    :func:`using_device`, else ``config.device``, else the CPU) is where the model and the
    training batches go, and where jets computed on the fly are computed; the points are drawn
    on the CPU whatever the device, so every device trains on the same samples.

    ``out_dir`` must be new, empty or a run folder already (:func:`manifoldtrain._io.claim_output_folder`;
    ``force`` writes into another folder anyway); it is checked before any work, and locked
    while the run works there (a second run into it is refused). A run that starts afresh (no
    checkpoint to resume, or ``resume=False``) first moves the files of an earlier run there
    into ``out_dir/.previous-run``, and removes them once it has written its first checkpoint;
    stopped before that, the next run into ``out_dir`` puts them back.

    ``distributed`` (default: :meth:`DistributedContext.from_environment
    <manifoldtrain.distributed.DistributedContext.from_environment>` on ``device``, i.e. the
    processes that ``torchrun`` started, else this one) trains one model on several
    processes (see :mod:`manifoldtrain.distributed`): every process calls this function with
    the same arguments, each trains on ``device`` (``cuda``: its own GPU), only rank 0 writes
    into ``out_dir`` (and needs to see it; a jet cache, ``data.cache_dir`` or ``data.path``,
    must be readable by all), and every process returns once rank 0 has written the results.
    ``results.json`` records ``world_size``, the number of processes, and ``communication``:
    rank 0's seconds in the gradient all-reduce and the steps they cover (zeros on one process).
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config: expected an ExperimentConfig, got {type(config).__name__}")
    if distributed is not None and not isinstance(distributed, DistributedContext):
        raise TypeError(f"distributed: expected a DistributedContext or None, got {type(distributed).__name__}")
    if distributed is not None and distributed.is_distributed:
        if device is not None and check_device(device).type != distributed.device.type:
            raise ValueError(f"device: {str(device)!r}, but the distributed context trains on {distributed.device}")
        device = distributed.device
    elif device is not None:
        device = check_device(device)
    elif _DEVICE.get() is not None:
        device = _DEVICE.get()
    else:
        device = check_device(config.device, "config.device") if config.device is not None else torch.device("cpu")
    started = time.perf_counter()
    ctx = distributed if distributed is not None else DistributedContext.from_environment(device)
    device = ctx.device if ctx.is_distributed else device
    with ctx.failure_guard(), (release_if_unused(out_dir) if ctx.is_main else contextlib.nullcontext()):
        claimed: list[Path] = []
        try:
            results = _run(config, out_dir, ctx, resume=resume, data=data, progress=progress, force=force,
                           device=device, started=started, claimed=claimed)
        finally:
            for folder in claimed:  # the hold on its lock that _run's claim took (rank 0's)
                unlock_path(folder / LOCK)
        ctx.barrier()  # every process returns once rank 0 has written the results
    return results


def _run(config: ExperimentConfig, out_dir, ctx: DistributedContext, *, resume: bool,
         data: tuple[JetDataset | DataSource, JetDataset] | None, progress: bool, force: bool,
         device: torch.device, started: float, claimed: list[Path]) -> dict:
    """:func:`run_experiment`, its arguments checked, on each of ``ctx``'s processes (the
    folder whose lock it holds, rank 0's, appended to ``claimed``)."""
    main = ctx.is_main
    names = target_names(config.manifold)  # a plug-in's bad names are refused before any work

    def claim() -> Path:
        folder = claim_output_folder(out_dir, "run", force=force, argument="out_dir")
        claimed.append(folder)
        return _recover_previous(folder)

    out = ctx.run_on_main(claim)
    if data is not None:
        train, test = data
    else:
        _check_model_fits(config)
        train, test = _make_data(config, progress=progress and config.train.progress and main, write_cache=main, ctx=ctx, device=device)
        _check_source_fits(config, train, test)
    inputs, targets = _normalisation_data(train)
    dtype = inputs.dtype
    model = build_model(config.model, inputs, targets, seed=config.model_seed).to(dtype)
    del inputs, targets
    model = model.to(device)
    trainer = Trainer(
        model, config.objective, train, test, config.train, checkpoint_dir=out,
        extra={"model_spec": _model_spec(config, train), "model_seed": config.model_seed,
               "data": _data_identity(config), "manifold": manifold_description(config.manifold),
               "target_names": list(names)},
        distributed=ctx,
    )
    # A refused resume (other settings, a damaged checkpoint) raises here, before anything is written.
    if not (resume and trainer.resume()) and main:
        _set_aside_previous(out)  # an earlier run's files: never beside a new run's, kept until its first checkpoint
    if main:
        save_config(config, out / "config.toml")
    history = trainer.fit(resume=False)  # resumed above, or starting afresh
    best = trainer.best
    if best is not None:  # the figures of the model chosen on the validation set
        model.load_state_dict(best["model"])
    last = history.records[-1] if history.records else {}
    metrics = _final_metrics(trainer, model, test, last, names)
    results = {
        "objective": list(config.objective.names),
        "test": metrics.to_dict(),
        "checkpoint": BEST_NAME if best is not None else CHECKPOINT_NAME,
        "best_epoch": best["epoch"] if best is not None else None,
        "validation": best["validation"] if best is not None else None,
        "n_validation": len(trainer.validation) if trainer.validation is not None else 0,
        "stopped_early": trainer.stopped_early,
        "train_loss": last.get("loss"),
        "train_losses": last.get("losses"),
        "normalisers": trainer.normalisers,
        "seconds": trainer.seconds,
        "wall_seconds": None,  # below: the whole call's, up to writing results.json
        "evaluation_seconds": trainer.evaluation_seconds,
        "checkpoint_seconds": trainer.checkpoint_seconds,
        "epochs": trainer.epoch,
        "steps": trainer.steps,
        "history": history.records,
        "device": str(trainer.device),
        "world_size": ctx.world_size,
        "communication": {"all_reduce_seconds": trainer.communication_seconds,
                          "steps": trainer.communication_steps},
        "machine": machine_info(),
    }
    results["wall_seconds"] = time.perf_counter() - started
    if not main:
        return results
    write_json(out / "results.json", results)
    if history.records:
        from manifoldtrain.plotting import plot_history

        plot_history(history.records, out / "curves.png", title=", ".join(config.objective.names))
    return results


def evaluate_checkpoint(
    path: str | os.PathLike, test: JetDataset, *, device: str | torch.device | None = None
) -> Metrics:
    """Metrics of the model in a checkpoint file, or of a run folder's model (:func:`run_checkpoint`:
    its ``best.pt`` where it has one, else its ``checkpoint.pt``), on ``test``, computed on
    ``device`` (default CPU; see :func:`check_device`)."""
    device = check_device(device) if device is not None else torch.device("cpu")
    state = load_checkpoint(run_checkpoint(path))
    extra = state.get("extra", {})
    if "manifold" in extra and test.meta.get("manifold") is not None:
        diff = first_difference(test.meta.get("manifold"), extra["manifold"], "manifold",
                                ("in the test data", "in the run"))
        if diff is not None:
            raise ValueError(f"test: its jets come from another manifold or settings than the run's ({diff})")
        run_data = extra.get("data", {})
        if run_data.get("path") is None and test.meta.get("seed") == run_data.get("seed", 0):
            warnings.warn(
                f"test: drawn with seed {test.meta.get('seed')}, the seed of the run's own data: these are the run's "
                "training points, unless this is the run's own test split (make_data's); generate a test set with "
                "another --seed",
                stacklevel=2,
            )
    spec = extra.get("model_spec", {})
    for what, jet in (("input", test.inputs), ("target", test.targets)):
        want = spec.get(f"{what}_shape")
        if want is not None and list(jet.shape) != list(want):
            raise ValueError(f"test: its {what}s have shape {list(jet.shape)}, the model was trained on {list(want)}")
    model = model_from_checkpoint(state).to(device)
    names = extra.get("target_names")  # absent from checkpoints written before it was recorded: y0, y1, ...
    return evaluate(model, test.to(next(model.parameters()).dtype), output_names=names)

