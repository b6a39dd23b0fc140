"""The main job: the same network trained three ways on the same data and budget (the cube's, by default)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs
import torch

from manifoldtrain._io import output_folder
from manifoldtrain._threads import busy as _busy, load_average as _load_average, threads_for as _threads_for
from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.experiment import make_data, run_experiment
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube
from manifoldtrain.registry import check_manifold_setting, manifold_label, manifold_of, manifold_table
from manifoldtrain.nn import MLPConfig, check_hidden
from manifoldtrain.objectives import Objective
from manifoldtrain.records import machine_info, write_json
from manifoldtrain.training import TrainConfig

__all__ = ["DemoConfig", "OBJECTIVES", "run_demo", "plot_report"]

#: The demo's objectives by name: value training, and derivative training of order 1 and 2
#: (weights as in :meth:`Objective.second_order`).
OBJECTIVES = {"value": Objective.value(), "first": Objective.first_order(), "second": Objective.second_order()}


def _check_manifold(instance, attribute, value):
    check_manifold_setting(value, attribute.name)


def _check_objectives(instance, attribute, value):
    if not value or any(v not in OBJECTIVES for v in value):
        raise ValueError(f"{attribute.name}: expected names among {sorted(OBJECTIVES)}, got {value!r}")


@attrs.frozen
class DemoConfig:
    """Built-in defaults of ``manifoldtrain demo`` (under 10 minutes on 2 CPU cores).

    Attributes
    ----------
    n_train, n_test : int
        Samples to train and test on (the same for every run).
    hidden : tuple of int
        Hidden layers of the tanh MLP (the same network and initial weights for every run).
    seconds_per_run : float
        Wall-clock training budget of each run (the same for every run).
    batch_size : int
    learning_rate : float
    seed : int
        Seeds the data, the initial weights and the batch order.
    objectives : tuple of str
        Which of ``value``, ``first``, ``second`` to train.
    manifold : str or Manifold
        The manifold: a registered name (``"cube"``) or ``"package.module:ClassName"`` of your
        own (:mod:`manifoldtrain.registry`), with its default settings, or a
        :class:`~manifoldtrain.Manifold` instance with settings of your choice
        (``manifoldtrain demo --manifold NAME --SETTING VALUE`` builds one).
    """

    n_train: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=2))
    n_test: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=1))
    hidden: tuple[int, ...] = attrs.field(default=(256, 256, 256), converter=tuple, validator=check_hidden)
    seconds_per_run: float = attrs.field(default=150.0, validator=attrs_validator(check_float, positive=True))
    batch_size: int = attrs.field(default=64, validator=attrs_validator(check_int, minimum=1))
    learning_rate: float = attrs.field(default=1e-3, validator=attrs_validator(check_float, positive=True))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    objectives: tuple[str, ...] = attrs.field(default=("value", "first", "second"), converter=tuple, validator=_check_objectives)
    manifold: str | Manifold = attrs.field(default="cube", validator=_check_manifold)
    progress: bool = True

    def experiment(self, objective: str) -> ExperimentConfig:
        """The run of one objective."""
        return ExperimentConfig(
            manifold=manifold_of(self.manifold),
            data=DataConfig(n_train=self.n_train, n_test=self.n_test, seed=self.seed, split_seed=self.seed),
            model=MLPConfig(hidden=self.hidden, activation="tanh"),
            objective=OBJECTIVES[objective],
            train=TrainConfig(
                epochs=1_000_000,
                time_budget=self.seconds_per_run,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                eval_every=0,
                eval_interval=self.seconds_per_run / 15,
                seed=self.seed,
                progress=self.progress,
            ),
            model_seed=self.seed,
        )


def _is_the_cube(manifold: Manifold) -> bool:
    """Whether ``manifold`` is the cube with its default settings, the one whose figures (the
    ratio on idle cores, corner coordinates) the demo may quote."""
    return type(manifold) is Cube and manifold == Cube()


def _busy_machine_note(load: float | None, cpus: int | None, threads: int, cube: bool = False) -> str | None:
    """A warning when other work already occupies the CPUs that the demo's torch threads need
    (``load``: cores busy with other work before it starts, on ``cpus`` cores, ``threads`` torch threads),
    or ``None``. Its budgets are wall-clock seconds, so a busy machine gives every run fewer
    epochs, the slower derivative runs relatively fewer still (a multi-threaded torch op that
    waits for a descheduled thread can run several times slower), and the ratio is then not
    the quiet machine's. The cube's ratio on idle cores is quoted only for the cube (``cube``:
    the default cube)."""
    if not _busy(load, cpus, threads):
        return None
    quiet = " (5-7x for the cube on 2 idle cores in our fresh installs)" if cube else ""
    return (f"note: this machine is busy (load {load:.1f} on {cpus} cores before the demo, torch uses {threads} "
            f"threads): the wall-clock budgets will give every run fewer epochs, derivative training relatively "
            f"fewer still, so the ratio below is not a quiet machine's{quiet}. Rerun when the machine is idle, "
            f"or compare epoch counts.")


def run_demo(out_dir: str | os.PathLike = "demo", config: DemoConfig = DemoConfig(), *, echo=print, force: bool = False,
             fit_threads: bool = False) -> dict:
    """Train the demo's runs, print a table, write ``results.json`` and ``report.png`` to ``out_dir``.

    ``results.json`` holds ``"runs"``: per run ``objective``, ``test_rmse``, ``test_rmse_d1``,
    ``test_rmse_d2``, ``test_per_output`` (each target output's clean RMSE, the spread of its
    test targets and their ratio: :attr:`Metrics.per_output
    <manifoldtrain.evaluation.Metrics.per_output>`), ``seconds``, ``epochs``, ``seed``; and
    ``"ratio_value_to_second"``, the clean test RMSE of value training over that of
    second-order training. It prints the runs' table and, per output, each run's RMSE relative
    to the spread of the output's test targets (:func:`format_outputs`). Each run also keeps
    its own directory (config, checkpoint, history): a stopped demo resumes where it stopped.
    ``out_dir`` must be new, empty or a demo folder already (``force``: any folder). With
    ``fit_threads`` (the command line's default, unless ``--threads`` is given), torch uses only
    the cores that other work leaves idle while the demo runs, and says so in its busy-machine note.
    """
    if not isinstance(config, DemoConfig):
        raise TypeError(f"config: expected a DemoConfig, got {type(config).__name__}")
    with output_folder(out_dir, "demo", force=force, argument="out_dir") as out:  # locked while the demo runs
        return _locked_demo(out, config, echo, fit_threads)


def _locked_demo(out: Path, config: DemoConfig, echo, fit_threads: bool) -> dict:
    """:func:`run_demo` in its claimed output folder ``out``."""
    load, cpus, threads = _load_average(), os.cpu_count(), torch.get_num_threads()
    busy = _busy_machine_note(load, cpus, threads, cube=_is_the_cube(config.experiment(config.objectives[0]).manifold))
    fitted = _threads_for(load, cpus, threads) if fit_threads else threads
    if busy and fitted != threads:
        busy += (f" The demo uses {fitted} torch thread{'s' if fitted > 1 else ''} instead of {threads} meanwhile "
                 "(a thread on a busy core stalls every step; --threads N chooses).")
    if busy:
        echo(busy)
    torch.set_num_threads(fitted)
    try:
        return _run_demo(out, config, echo, busy, load, cpus)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, config: DemoConfig, echo, busy: str | None, load: float | None, cpus: int | None) -> dict:
    """:func:`run_demo` in ``out``, claimed, with the busy-machine note (or None) said."""
    t0 = time.perf_counter()
    echo(f"manifoldtrain demo: {manifold_label(config.manifold)}, {config.n_train} training / {config.n_test} test samples, "
         f"MLP {list(config.hidden)} tanh, {config.seconds_per_run:g} s per objective -> {out}")
    # One data set for every run, of the highest order any of them needs.
    richest = max(config.objectives, key=lambda name: OBJECTIVES[name].max_order)
    train, test = make_data(config.experiment(richest), progress=config.progress)
    runs, histories = [], {}
    for name in config.objectives:
        echo(f"  training '{name}' ({', '.join(OBJECTIVES[name].names)}) ...")
        res = run_experiment(config.experiment(name), out / f"run_{name}", data=(train, test), progress=config.progress)
        runs.append(
            {
                "objective": name,
                "test_rmse": res["test"]["rmse"],
                "test_rmse_d1": res["test"]["rmse_d1"],
                "test_rmse_d2": res["test"]["rmse_d2"],
                "test_per_output": res["test"]["per_output"],
                "seconds": res["seconds"],
                "epochs": res["epochs"],
                "seed": config.seed,
            }
        )
        histories[name] = res["history"]
    by = {r["objective"]: r for r in runs}
    results = {
        "runs": runs,
        "config": attrs.asdict(config, recurse=False) | {"manifold": manifold_table(config.manifold)},
        "total_seconds": time.perf_counter() - t0,
        "machine": dict(machine_info(), cpus=cpus, load_average_before=load, load_average_after=_load_average(),
                        torch_threads=torch.get_num_threads()),
    }
    if busy:
        results["busy_machine"] = busy
    if "value" in by and "second" in by:
        results["ratio_value_to_second"] = by["value"]["test_rmse"] / by["second"]["test_rmse"]
    write_json(out / "results.json", results)
    plot_report(runs, histories, train, test, out, config)
    echo(format_table(runs))
    echo(format_outputs(runs))
    if "ratio_value_to_second" in results:
        echo(f"clean test RMSE, value / second order: {results['ratio_value_to_second']:.1f}x"
             + (" (on a busy machine: see the note above)" if busy else ""))
    echo(f"wrote {out / 'results.json'} and {out / 'report.png'} ({results['total_seconds']:.0f} s)")
    return results


def format_table(runs: list[dict]) -> str:
    """The runs as a plain-text table."""
    lines = [
        f"{'objective':<10} {'test RMSE':>10} {'RMSE d1':>10} {'RMSE d2':>10} {'epochs':>7} {'seconds':>8}",
    ]
    def num(v):
        return f"{v:10.3e}" if v is not None else f"{'-':>10}"

    for r in runs:
        lines.append(
            f"{r['objective']:<10} {num(r['test_rmse'])} {num(r['test_rmse_d1'])} {num(r['test_rmse_d2'])} "
            f"{r['epochs']:7d} {r['seconds']:8.1f}"
        )
    return "\n".join(lines)


#: At most this many outputs are listed by :func:`format_outputs` (all are in ``results.json``).
MAX_OUTPUTS_SHOWN = 24


def format_outputs(runs: list[dict]) -> str:
    """Each target output's clean test RMSE relative to the spread of its test targets (the
    runs' ``test_per_output``), one row per output, one column per run, as plain text."""
    first = runs[0]["test_per_output"]
    names = list(first)
    width = max(10, *(len(n) for n in names[:MAX_OUTPUTS_SHOWN]))
    lines = ["per output: clean test RMSE / std of its test targets (1.0: no better than predicting their mean)",
             f"{'output':<{width}} {'std':>10} " + " ".join(f"{r['objective']:>10}" for r in runs)]

    def ratio(v):
        return f"{v:10.4f}" if v is not None else f"{'-':>10}"

    for name in names[:MAX_OUTPUTS_SHOWN]:
        std = first[name]["std"]
        lines.append(f"{name:<{width}} {std:10.3e} "
                     + " ".join(ratio(r["test_per_output"][name]["relative_rmse"]) for r in runs))
    if len(names) > MAX_OUTPUTS_SHOWN:
        lines.append(f"... and {len(names) - MAX_OUTPUTS_SHOWN} more outputs in results.json")
    return "\n".join(lines)


def plot_report(runs, histories, train, test, out: Path, config: DemoConfig) -> Path:
    """``report.png``: learning curves and error histograms (top), predicted against true
    targets on the test set for each objective (bottom; the corner coordinates, for the cube)."""
    import numpy as np
    from matplotlib.figure import Figure

    from manifoldtrain.experiment import model_from_checkpoint
    from manifoldtrain.plotting import save_figure
    from manifoldtrain.training import CHECKPOINT_NAME, load_checkpoint

    colors = {"value": "tab:blue", "first": "tab:orange", "second": "tab:green"}
    k = len(runs)
    fig = Figure(figsize=(4.6 * max(k, 2), 8.6), layout="constrained")
    grid = fig.add_gridspec(2, 2 * k)
    ax_curve = fig.add_subplot(grid[0, :k])
    ax_hist = fig.add_subplot(grid[0, k:])
    truth = test.targets.value.double().numpy().ravel()
    outputs = test.targets.value[0].numel()
    what = "corner coordinate" if _is_the_cube(config.experiment(config.objectives[0]).manifold) else "target"
    lo, hi = truth.min(), truth.max()
    for col, r in enumerate(runs):
        name = r["objective"]
        pts = [(h["seconds"], h["test"]["rmse"]) for h in histories[name] if "test" in h]
        if pts:
            ax_curve.plot(*zip(*pts), "-o", ms=3, color=colors[name], label=name)
        model = model_from_checkpoint(load_checkpoint(out / f"run_{name}" / CHECKPOINT_NAME))
        with torch.no_grad():
            pred = model(test.inputs.value.to(next(model.parameters()).dtype)).double().numpy().ravel()
        err = np.abs(pred - truth)
        bins = np.logspace(np.log10(max(err.min(), 1e-7)), np.log10(err.max() + 1e-12), 50)
        ax_hist.hist(err, bins=bins, histtype="step", color=colors[name], label=f"{name} (RMSE {r['test_rmse']:.1e})")
        ax = fig.add_subplot(grid[1, 2 * col : 2 * col + 2])
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.scatter(truth, pred, s=2, alpha=0.35, color=colors[name])
        ax.set(xlabel=f"true {what}", ylabel="predicted", title=f"{name}: test RMSE {r['test_rmse']:.2e}")
        ax.set_aspect("equal")
    ax_curve.set(xlabel="training seconds", ylabel="test RMSE (clean)", yscale="log", title="learning curves (test)")
    spread = f"over all {outputs} {what}s" if outputs > 1 else f"of the {what}"
    ax_hist.set(xscale="log", xlabel=f"|predicted - true| {spread}", ylabel="count", title="error histogram (test)")
    ax_curve.legend(fontsize=9)
    ax_hist.legend(fontsize=9)
    fig.suptitle(
        f"{manifold_label(config.manifold)}: {config.n_train} training / {config.n_test} test samples, MLP {list(config.hidden)} tanh, "
        f"{config.seconds_per_run:g} s per objective"
    )
    path = out / "report.png"
    save_figure(fig, path)
    return path
