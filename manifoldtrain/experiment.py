"""Runs: data -> model -> trainer -> evaluation -> results, from one :class:`ExperimentConfig`."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import re
import warnings
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from manifoldtrain._io import claim_output_folder, foreign_names, release_if_unused, write_text_atomic
from manifoldtrain._validation import dtype_from_name
from manifoldtrain.config import ExperimentConfig, config_to_dict, save_config
from manifoldtrain.data import (JetCache, JetDataset, _provenance, _renamed, cached_jets, fingerprint, generate_jets,
                                generate_shards, load_jets, manifold_description)
from manifoldtrain.distributed import DistributedContext
from manifoldtrain.evaluation import Metrics, evaluate
from manifoldtrain.jet import Jet
from manifoldtrain.nn import build_model
from manifoldtrain.registry import MODELS
from manifoldtrain.registry import SOURCES
from manifoldtrain.sources import DataSource, OnTheFlySource, ShardedCacheSource, SubsetSource
from manifoldtrain.training import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, Trainer, load_checkpoint

#: The files a run writes into its folder (besides its marker).
RUN_OUTPUTS = ("config.toml", "results.json", "curves.png", CHECKPOINT_NAME, BEST_NAME, METRICS_NAME,
               # written into a run folder by `manifoldtrain robustness` (--run, and the comparison's runs)
               "robustness.json", "worst_case.png", "robustness_eval.json")

__all__ = ["RUN_OUTPUTS", "make_data", "run_experiment", "model_from_checkpoint", "evaluate_checkpoint", "machine_info",
           "command_line", "check_device", "device_argument", "using_device", "run_checkpoint"]

_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("manifoldtrain_device", default=None)


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


#: Training samples from which a model's input and output normalisation is computed when the
#: training data are a :class:`~manifoldtrain.sources.DataSource` (the first ones; all of a
#: smaller set, which then gives the model of the same data in memory).
NORMALISATION_SAMPLES = 2048


def make_data(config: ExperimentConfig, *, progress: bool = True) -> tuple[JetDataset | DataSource, JetDataset]:
    """The training and test data of ``config``: ``(train, test)``.

    With ``data.source = "memory"`` (the default) both are :class:`JetDataset` in memory
    (cached if ``config.data.cache_dir`` is set); otherwise ``train`` is a
    :class:`~manifoldtrain.sources.DataSource` (a sharded cache, data computed on the fly, a
    source of your own; see :class:`~manifoldtrain.config.DataConfig`) and ``test`` a fixed
    :class:`JetDataset`.

    Jets are generated up to the order needed: the objective's, or ``data.test_order`` if
    higher (value training generates values only).
    """
    return _make_data(config, progress=progress, write_cache=True)


def _make_data(config: ExperimentConfig, *, progress: bool, write_cache: bool,
               ctx: DistributedContext | None = None,
               device: torch.device | None = None) -> tuple[JetDataset | DataSource, JetDataset]:
    """:func:`make_data`; without ``write_cache`` a missing cache is generated but not written
    (the processes of a distributed run other than rank 0: one writer per cache). A sharded
    cache to generate (``source = "shards"`` with ``cache_dir``) is written by ``ctx``'s rank 0
    while the others wait."""
    d = config.data
    dtype = dtype_from_name("data.dtype", d.dtype)
    compute = dtype_from_name("data.compute_dtype", d.compute_dtype)
    n = d.n_train + d.n_test
    order = max(config.objective.max_order, d.test_order if d.test_order is not None else 0)
    if d.source == "shards":
        return _sharded_data(config, order, dtype, compute, progress=progress, ctx=ctx)
    if d.source != "memory":
        return _computed_data(config, order, dtype, compute, progress=progress, device=device)
    if d.path is not None:
        try:
            data = load_jets(d.path)
        except (FileNotFoundError, ValueError) as err:
            raise _renamed(err, "data.path") from None
        check_cache_matches(data, config.manifold, "data.path", d.path)
        if data.order < order:
            raise ValueError(f"data.path: {d.path} holds jets of order {data.order}; this run needs order {order} "
                             "(generate it with a higher --order)")
        if len(data) < n:
            raise ValueError(f"data.path: {d.path} holds {len(data)} samples; n_train + n_test = {n}")
        if data.inputs.dtype != dtype:
            raise ValueError(f"data.path: {d.path} is stored in {data.inputs.dtype}, data.dtype is {d.dtype!r}")
        _check_compute_dtype(data.meta, d.compute_dtype, "data.path", d.path)
        data = data.subset(slice(0, n))
        data = JetDataset(data.points, data.inputs.truncate(order), data.targets.truncate(order), data.meta)
    elif d.cache_dir is not None and not write_cache:
        key = fingerprint(config.manifold, n, d.seed, order, dtype, compute)
        if (Path(d.cache_dir) / key / "meta.json").is_file():  # complete: caches are renamed into place
            data = load_jets(Path(d.cache_dir) / key, expected_fingerprint=key)
        else:
            data = generate_jets(config.manifold, n, seed=d.seed, order=order, dtype=dtype, compute_dtype=compute,
                                 progress=progress)
    elif d.cache_dir is not None:
        data = cached_jets(config.manifold, n, d.cache_dir, seed=d.seed, order=order, dtype=dtype,
                           compute_dtype=compute, progress=progress)
    else:
        data = generate_jets(config.manifold, n, seed=d.seed, order=order, dtype=dtype, compute_dtype=compute,
                             progress=progress)
    return data.split(d.n_test, d.split_seed)


def _check_compute_dtype(meta: dict, compute_dtype: str, argument: str, path) -> None:
    """A cache's jets were computed in the dtype that the run's config says (``data.compute_dtype``
    describes the run's data, and its config.toml records it)."""
    cached = meta.get("compute_dtype")
    if cached is not None and cached != compute_dtype:
        raise ValueError(f"data.compute_dtype: the jets of {path} ({argument}) were computed in {cached}, "
                         f"data.compute_dtype is {compute_dtype!r}; set it to {cached!r} to train on this cache")


def _split_indices(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices of :meth:`JetDataset.split <manifoldtrain.data.JetDataset.split>`."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _sharded_data(config: ExperimentConfig, order: int, dtype: torch.dtype, compute: torch.dtype, *, progress: bool,
                  ctx: DistributedContext | None) -> tuple[DataSource, JetDataset]:
    """``source = "shards"``: the training samples read from a cache batch by batch, the test samples in memory."""
    d = config.data
    n = d.n_train + d.n_test
    if d.path is not None:
        path, argument = Path(d.path), "data.path"
    elif d.cache_dir is not None:
        key = fingerprint(config.manifold, n, d.seed, order, dtype, compute)
        path, argument = Path(d.cache_dir) / key, "data.cache_dir"

        def make() -> None:
            try:
                JetCache(path, expected_fingerprint=key).close()  # complete and intact: nothing to do
            except (FileNotFoundError, ValueError):
                generate_shards(config.manifold, n, path, seed=d.seed, order=order, dtype=dtype, compute_dtype=compute,
                                progress=progress)

        (ctx.run_on_main if ctx is not None else lambda fn: fn())(make)
    else:
        raise ValueError("data.source: 'shards' reads a jet cache batch by batch; set data.path to a cache written by "
                         "`manifoldtrain generate` (or train --data), or data.cache_dir to have one generated there")
    try:
        cache = JetCache(path, name=argument)  # its later read errors (damage found while training) name it too
    except (FileNotFoundError, ValueError) as err:
        raise _renamed(err, argument) from None
    check_cache_matches(cache, config.manifold, argument, path)
    if cache.order < order:
        raise ValueError(f"{argument}: {path} holds jets of order {cache.order}; this run needs order {order} "
                         "(generate it with a higher --order)")
    if len(cache) < n:
        raise ValueError(f"{argument}: {path} holds {len(cache)} samples; n_train + n_test = {n}")
    if cache.dtype != dtype:
        raise ValueError(f"{argument}: {path} is stored in {cache.dtype}, data.dtype is {d.dtype!r}")
    _check_compute_dtype(cache.meta, d.compute_dtype, argument, path)
    train_idx, test_idx = _split_indices(n, d.n_test, d.split_seed)
    test = cache.load(test_idx, order=order)
    train = SubsetSource(ShardedCacheSource(cache, order=config.objective.max_order), train_idx)
    return train, test


def _computed_data(config: ExperimentConfig, order: int, dtype: torch.dtype, compute: torch.dtype, *, progress: bool,
                   device: torch.device | None = None) -> tuple[DataSource, JetDataset]:
    """``source = "on-the-fly"`` or a source of one's own: the training jets computed batch by
    batch (on-the-fly ones on ``device``, the training device), the test set (the test part of
    the points of ``source = "memory"``) computed now, on the CPU."""
    from tqdm.auto import tqdm

    d = config.data
    if d.source == "on-the-fly":  # before the test set is computed
        if d.path is not None:
            raise ValueError("data.path: source = 'on-the-fly' computes its jets and reads no cache; remove data.path "
                             "(or train --data), or use source = \"shards\" to train from the cache")
        if d.cache_dir is not None:
            raise ValueError("data.cache_dir: source = 'on-the-fly' computes its jets and stores none; remove "
                             "data.cache_dir, or use source = \"shards\" to have a cache generated there")
    n = d.n_train + d.n_test
    points = config.manifold.sample(n, torch.Generator().manual_seed(d.seed), dtype=torch.float64)
    train_idx, test_idx = _split_indices(n, d.n_test, d.split_seed)
    xs, ys = [], []
    with tqdm(total=d.n_test, desc="test jets", unit="sample", disable=not progress, leave=False) as bar:
        for chunk in points[test_idx].split(256):
            x, y = config.manifold.jets(chunk.to(compute), order)
            xs.append(x.to(dtype))
            ys.append(y.to(dtype))
            bar.update(len(chunk))
    meta = {**_provenance(config.manifold, n, d.seed, order, dtype, compute),
            "fingerprint": fingerprint(config.manifold, n, d.seed, order, dtype, compute)}
    test = JetDataset(points[test_idx].to(dtype), Jet(*(torch.cat(c) for c in zip(*(x.components() for x in xs)))),
                      Jet(*(torch.cat(c) for c in zip(*(y.components() for y in ys)))), meta)
    calibration = d.calibration if d.calibration is not None else 512
    train_order = config.objective.max_order
    if d.source == "on-the-fly":
        if (d.mode or "fresh") == "pool":
            train = OnTheFlySource(config.manifold, mode="pool", points=points[train_idx], seed=d.seed,
                                   order=train_order, dtype=dtype, compute_dtype=compute, calibration=calibration,
                                   device=device)
        else:
            train = OnTheFlySource(config.manifold, d.n_train, mode="fresh", seed=d.seed, order=train_order,
                                   dtype=dtype, compute_dtype=compute, calibration=calibration, device=device)
        return train, test
    cls = SOURCES.get(d.source)
    train = cls.from_config(config, order=train_order, dtype=dtype)
    if not isinstance(train, DataSource):
        raise TypeError(f"data.source: {d.source}.from_config must return a DataSource, got {type(train).__name__}")
    return train, test


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


def _manifold_difference(data: JetDataset, description: dict, labels: tuple[str, str]) -> str | None:
    """The first setting in which the manifold that made ``data`` differs from ``description``
    (:func:`~manifoldtrain.data.manifold_description`), or None."""
    from manifoldtrain.training import _first_difference

    return _first_difference(data.meta.get("manifold"), description, "manifold", labels)


def check_cache_matches(data: JetDataset | JetCache, manifold, argument: str, path) -> None:
    """Raise ``ValueError`` naming ``argument`` and the first differing setting unless the jet
    cache ``data`` (loaded, or a :class:`~manifoldtrain.data.JetCache`) was generated from
    ``manifold`` with the same settings."""
    diff = _manifold_difference(data, manifold_description(manifold), ("in the cache", "now"))
    if diff is not None:
        raise ValueError(
            f"{argument}: {path} was generated from another manifold or settings ({diff}); "
            "generate it with the run's manifold settings"
        )


def _model_spec(config: ExperimentConfig, train: JetDataset | DataSource) -> dict:
    table = config_to_dict(config)["model"]
    memory = isinstance(train, JetDataset)
    return {
        "model": table,
        "input_shape": list(train.inputs.shape if memory else train.input_shape),
        "target_shape": list(train.targets.shape if memory else train.target_shape),
        "dtype": config.data.dtype,
    }


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
    ``objective`` (term names), ``test`` (metrics of the model in ``checkpoint``),
    ``checkpoint`` (``"best.pt"``, the model of lowest validation ``best_metric``, with a validation set;
    else ``"checkpoint.pt"``, the last model), ``best_epoch`` and ``validation`` (that model's
    epoch and validation metrics; None without a validation set), ``stopped_early``,
    ``seconds``, ``epochs``, ``history``; and ``out_dir/curves.png``, the learning curves of
    every term and every recorded test metric. With ``resume``, a run stopped half way
    continues from its last checkpoint. ``data`` may pass ``(train, test)`` directly (``train``
    a :class:`JetDataset` or a :class:`~manifoldtrain.sources.DataSource`).

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``; default: the one set by
    :func:`using_device`, else ``config.device``, else the CPU) is where the model and the
    training batches go, and where jets computed on the fly are computed; the points are drawn
    on the CPU whatever the device, so every device trains on the same samples.

    ``out_dir`` must be new, empty or a run folder already (:func:`manifoldtrain._io.claim_output_folder`;
    ``force`` writes into another folder anyway); it is checked before any work. A run that
    starts afresh (no checkpoint to resume) first removes the results of an earlier run there.

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
    ctx = distributed if distributed is not None else DistributedContext.from_environment(device)
    device = ctx.device if ctx.is_distributed else device
    with ctx.failure_guard(), (release_if_unused(out_dir) if ctx.is_main else contextlib.nullcontext()):
        results = _run(config, out_dir, ctx, resume=resume, data=data, progress=progress, force=force, device=device)
        ctx.barrier()  # every process returns once rank 0 has written the results
    return results


def _run(config: ExperimentConfig, out_dir, ctx: DistributedContext, *, resume: bool,
         data: tuple[JetDataset | DataSource, JetDataset] | None, progress: bool, force: bool,
         device: torch.device) -> dict:
    """:func:`run_experiment`, its arguments checked, on each of ``ctx``'s processes."""
    main = ctx.is_main
    out = ctx.run_on_main(lambda: claim_output_folder(out_dir, "run", force=force, argument="out_dir"))
    if data is not None:
        train, test = data
    else:
        train, test = _make_data(config, progress=progress and main, write_cache=main, ctx=ctx, device=device)
    inputs, targets = _normalisation_data(train)
    dtype = inputs.dtype
    model = build_model(config.model, inputs, targets, seed=config.model_seed).to(dtype)
    del inputs, targets
    model = model.to(device)
    trainer = Trainer(
        model, config.objective, train, test, config.train, checkpoint_dir=out,
        extra={"model_spec": _model_spec(config, train), "model_seed": config.model_seed,
               "data": _data_identity(config), "manifold": manifold_description(config.manifold)},
        distributed=ctx,
    )
    # A refused resume (other settings, a damaged checkpoint) raises here, before anything is written.
    if not (resume and trainer.resume()) and main:
        theirs = foreign_names(out)  # a folder forced open beside other files: those are not ours
        for stale in set(RUN_OUTPUTS) - theirs:
            (out / stale).unlink(missing_ok=True)  # an earlier run's files: never beside a new run's
    if main:
        save_config(config, out / "config.toml")
    history = trainer.fit(resume=False)  # resumed above, or starting afresh
    best = trainer.best
    if best is not None:  # the figures of the model chosen on the validation set
        model.load_state_dict(best["model"])
    metrics = evaluate(model, test)
    last = history.records[-1] if history.records else {}
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
        "epochs": trainer.epoch,
        "steps": trainer.steps,
        "history": history.records,
        "device": str(trainer.device),
        "world_size": ctx.world_size,
        "communication": {"all_reduce_seconds": trainer.communication_seconds,
                          "steps": trainer.communication_steps},
        "machine": machine_info(),
    }
    if not main:
        return results
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
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
        diff = _manifold_difference(test, extra["manifold"], ("in the test data", "in the run"))
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
    return evaluate(model, test.to(next(model.parameters()).dtype))

