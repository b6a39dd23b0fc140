"""The paper's headline: value vs first- vs second-order training on the cube, several seeds.

For each seed: one data set (the seed draws the points and splits them), one network
(tanh MLP 3x256, the seed draws its initial weights), and for each objective

* ``value``: ``Objective.value()``;
* ``first``: ``Objective.first_order()`` (relative weights 1, 1);
* ``second``: ``Objective.second_order()`` (relative weights 1, 1, 0.03);
* ``second_rK`` (K = 1, 2, 4): the same terms along K random (pairs of) directions,
  ``Objective.second_order(directions=K)``, the unbiased cheap estimate (``1 + 3K`` jet rows
  instead of 28); compared with ``second`` (ratio ``second_rK / second``);
* ``second_d2rK`` (K = 1, 2): the full first order with the second order along K random
  pairs (``1 + 6 + 3K`` rows);
* ``second_gK`` (K = 2, 3): K random directions for the first order, and for the second order
  the grid of all K x K pairs of K and K directions, ``Objective.second_order(directions=K,
  grid=True)`` (``1 + 2K + K**2`` rows).

DESIGN.md asks for every comparison both ways, and this script measures each:

* **equal wall-clock** (``--seconds S``, the default: S seconds for every objective): the
  cost view, a derivative step costs more;
* **equal data, each trained to convergence** (``--epochs VALUE FIRST SECOND``: an epoch
  budget per objective, long enough for its learning curve to flatten): the paper's
  setting and the headline ratio. Epoch budgets make the result independent of the
  machine's speed, so its runs may be spread over processes (``--seeds``,
  ``--objectives``, ``--threads 1``) and merged with ``--combine``.

Reported per objective: final clean test RMSE (mean and spread over seeds), the best test
RMSE along the run (what early stopping on the test set would give, a view that favours
value training, which overfits), derivative RMSEs, and the ratios value / second and
value / first of both. Learning curves go to a .png beside the JSON.

Usage::

    python benchmarks/accuracy.py --out benchmarks/results/accuracy.json   # wall clock, ~1 hour on 2 cores
    python benchmarks/accuracy.py --epochs 1000 1000 800 --out benchmarks/results/accuracy_converged.json
    python benchmarks/accuracy.py --epochs 1000 1000 800 --device cuda --threads 1 --out ...   # on a GPU
    python benchmarks/accuracy.py --quick                                 # smoke run
    # issue 24, item 4: a deeper network, another weight of the second-order term
    python benchmarks/accuracy.py --epochs 1000 1000 800 --hidden 256 256 256 256 256 256 --out ...
    python benchmarks/accuracy.py --epochs 1000 1000 800 --objectives second --d2-weight 0.1 --out ...
    # training poses from a pose domain 10% wider than the test poses (the same test set)
    python benchmarks/accuracy.py --epochs 1000 1000 800 --train-margin 0.1 --out ...

``--hidden``, ``--d2-weight`` and ``--train-margin`` are recorded in the results' ``meta``;
``--combine`` refuses files that differ in them (or in the data sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import attrs
import torch

from manifoldtrain.data import generate_jets, split_index
from manifoldtrain.evaluation import evaluate
from manifoldtrain.devices import device_argument
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import Trainer, TrainConfig

D2_WEIGHT = Objective.second_order().terms[2].weight  # the library default (0.03), read, not repeated


def build_objectives(d2_weight: float = D2_WEIGHT) -> dict[str, Objective]:
    """The objectives by name, every second-order term at weight ``d2_weight`` (``--d2-weight``)."""
    second = (1.0, 1.0, d2_weight)
    return {"value": Objective.value(), "first": Objective.first_order(), "second": Objective.second_order(second),
            **{f"second_r{k}": Objective.second_order(second, directions=k) for k in (1, 2, 4)},
            **{f"second_d2r{k}": Objective((ValueTerm(), DerivativeTerm(1),
                                            DerivativeTerm(2, d2_weight, directions=k))) for k in (1, 2)},
            **{f"second_g{k}": Objective.second_order(second, directions=k, grid=True) for k in (2, 3)}}


OBJECTIVES = build_objectives()


def benchmark_cube(quick: bool = False) -> Cube:
    """The cube of the runs: the paper's (``Cube()``), or a tiny one for ``--quick``."""
    return Cube(image_size=11, extent=0.6, sigma=0.08) if quick else Cube()


def test_set(cube, n_train: int, n_test: int, seed: int, order: int = 2, progress: bool = False,
             device="cpu"):
    """Seed ``seed``'s test set, rendered alone: the poses ``data.split(n_test, seed=seed)`` gives
    the test side of the ``n_train + n_test`` poses drawn with ``1000 + seed``, at ``order``."""
    return generate_jets(cube, n_train + n_test, seed=1000 + seed, order=order, progress=progress, device=device,
                         index=split_index(n_train + n_test, n_test, seed)[1]).to("cpu")


def training_cube(cube: Cube, margin: float) -> Cube:
    """The cube the training poses are drawn from: ``cube`` with its pose domain widened by
    ``margin`` (``max_angle`` and ``translation_radius`` times ``1 + margin``; ``cube`` itself
    for 0). Its ``sample`` draws the same random numbers, so each training pose is the pose of
    the unwidened draw with its rotation angle and translation scaled by ``1 + margin``."""
    if margin == 0:
        return cube
    return attrs.evolve(cube, max_angle=cube.max_angle * (1 + margin),
                        translation_radius=cube.translation_radius * (1 + margin))


def run(cube, n_train, n_test, hidden, seeds, budgets, objectives=tuple(OBJECTIVES), batch_size=64, progress=False,
        checkpoint_dir=None, device="cpu", d2_weight=D2_WEIGHT, train_margin=0.0) -> list[dict]:
    """Train each objective for each seed; ``budgets[name]`` is ``(epochs, seconds or None)``.

    ``hidden``: the MLP's hidden widths; ``d2_weight``: the weight of every second-order term.

    ``train_margin``: the training poses come from :func:`training_cube` (a pose domain
    ``1 + train_margin`` times as wide, the same number of samples), the test poses from ``cube``
    as without it (the same test set): every objective trains on the same widened data.

    ``device``: where the data are rendered and the network trains (the same poses
    and seeds on every device; the jets agree to float64 rounding before they are stored in
    float32, the training to float32 rounding, which grows along a run).

    With ``checkpoint_dir`` each run checkpoints into ``checkpoint_dir/s{seed}_{name}`` about 40
    times along its budget and continues from there when run again (a stopped run loses at
    most 1/40 of its work; the continued run is the uninterrupted one, see ``Trainer.fit``)."""
    built = build_objectives(d2_weight)
    runs = []
    for seed in seeds:
        # Rendered on the device, then kept on the CPU like any data set: the Trainer copies the
        # training jets to the model's device once, evaluate() moves test batches.
        # Jets up to the order the objectives read (values alone for value training: a 56000-sample
        # value run needs 0.4 GB, not 11 GB); the test set at order 2 always, for the derivative
        # errors every run reports: the same samples, rendered alone (generate_jets' index).
        order = max(built[name].max_order for name in objectives)
        if train_margin:
            # The training side of the same split, drawn from the widened domain, rendered alone.
            train = generate_jets(training_cube(cube, train_margin), n_train + n_test, seed=1000 + seed, order=order,
                                  progress=progress, device=device,
                                  index=split_index(n_train + n_test, n_test, seed)[0]).to("cpu")
            test = test_set(cube, n_train, n_test, seed, progress=progress, device=device)
        else:
            data = generate_jets(cube, n_train + n_test, seed=1000 + seed, order=order, progress=progress,
                                 device=device).to("cpu")
            train, test = data.split(n_test, seed=seed)
            del data
            if order < 2:
                test = test_set(cube, n_train, n_test, seed, progress=progress, device=device)
        for name in objectives:
            epochs, seconds = budgets[name]
            model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed).to(device)
            # 20 evaluations along each run, at equal time (wall-clock view) or equal epochs: every one
            # of them (eval_overhead=None; the default skips those that cost over a tenth of the training).
            evals = dict(eval_every=0, eval_interval=seconds / 20) if seconds else dict(eval_every=max(1, epochs // 20))
            evals["eval_overhead"] = None
            keep = dict(checkpoint_every=max(1, epochs // 40)) if checkpoint_dir and not seconds else {}
            cfg = TrainConfig(epochs=epochs, time_budget=seconds, batch_size=batch_size, learning_rate=1e-3,
                              seed=seed, progress=progress, **evals, **keep)
            t0 = time.perf_counter()
            folder = Path(checkpoint_dir) / f"s{seed}_{name}" if checkpoint_dir and not seconds else None
            trainer = Trainer(model, built[name], train, test, cfg, checkpoint_dir=folder)
            history = trainer.fit()
            final = evaluate(model, test)
            curve = [(r["seconds"], r["test"]["rmse"]) for r in history.records if "test" in r]
            curve_epochs = [r["epoch"] for r in history.records if "test" in r]
            train_fit = evaluate(model, train.subset(slice(0, n_test)), order=0).rmse
            runs.append({
                "seed": seed, "objective": name, "test_rmse": final.rmse, "test_rmse_d1": final.rmse_d1,
                "test_rmse_d2": final.rmse_d2, "best_test_rmse": min(r for _, r in curve), "train_rmse": train_fit,
                "epochs": trainer.epoch, "seconds": trainer.seconds, "wall_seconds": time.perf_counter() - t0,
                "curve": curve, "curve_epochs": curve_epochs,
            })
            print(f"seed {seed} {name:<6} test RMSE {final.rmse:.3e} (best {runs[-1]['best_test_rmse']:.3e}, "
                  f"train {train_fit:.1e}), d1 {final.rmse_d1:.2e}, d2 {final.rmse_d2:.2e}, {trainer.epoch} epochs, "
                  f"{trainer.seconds:.0f} s", flush=True)
    return runs


def _sd(values: list[float]) -> float:
    """The sample standard deviation (n - 1), as every benchmark here reports it; 0 for one value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    """Means and sample standard deviations over seeds, and value/other ratios per seed."""
    out = {}
    names = [n for n in OBJECTIVES if any(r["objective"] == n for r in runs)]
    for name in names:
        rs = [r for r in runs if r["objective"] == name]
        out[name] = {k: (statistics.mean(r[k] for r in rs), _sd([r[k] for r in rs]))
                     for k in ("test_rmse", "best_test_rmse", "test_rmse_d1", "test_rmse_d2", "epochs", "seconds")}
    by = {(r["seed"], r["objective"]): r for r in runs}
    for other in ("second", "first"):
        seeds = sorted(s for s, o in by if o == "value" and (s, other) in by)
        if not seeds:
            continue
        for key in ("test_rmse", "best_test_rmse"):
            ratios = [by[s, "value"][key] / by[s, other][key] for s in seeds]
            out[f"ratio_value_to_{other}_{key}"] = (statistics.mean(ratios), _sd(ratios), ratios)
    for name in names:
        seeds = sorted(s for s, o in by if o == name and (s, "second") in by)
        if name.startswith("second_") and seeds:
            ratios = [by[s, name]["test_rmse"] / by[s, "second"]["test_rmse"] for s in seeds]
            out[f"ratio_{name}_to_second_test_rmse"] = (statistics.mean(ratios), _sd(ratios), ratios)
    return out


def plot(runs: list[dict], path: str, view: str) -> None:
    from matplotlib.figure import Figure

    from manifoldtrain.plotting import save_figure

    colors = {"value": "tab:blue", "first": "tab:orange", "second": "tab:green", "second_r1": "tab:red",
              "second_r2": "tab:purple", "second_r4": "tab:brown", "second_d2r1": "tab:pink", "second_d2r2": "tab:gray",
              "second_g2": "tab:olive", "second_g3": "tab:cyan"}
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    first_seed = min(x["seed"] for x in runs)
    for r in runs:
        e = [err for _, err in r["curve"]]
        t = [sec for sec, _ in r["curve"]] if view == "wall-clock" else r["curve_epochs"]
        ax.plot(t, e, "-", color=colors[r["objective"]], alpha=0.8, label=r["objective"] if r["seed"] == first_seed else None)
    if view == "wall-clock":
        ax.set(xlabel="training seconds", title="Cube: same data and wall clock (one line per seed)")
    else:
        ax.set(xlabel="epochs", xscale="log", title="Cube: same data, each trained to convergence (one line per seed)")
    ax.set(ylabel="clean test RMSE", yscale="log")
    ax.legend()
    save_figure(fig, path)


def report(summary: dict) -> None:
    print("\n| objective | test RMSE (mean ± sd) | best along the run | d1 RMSE | d2 RMSE | epochs | seconds |"
          "\n|---|---|---|---|---|---|---|")
    for name in OBJECTIVES:
        if name in summary:
            s = summary[name]
            print(f"| {name} | {s['test_rmse'][0]:.2e} ± {s['test_rmse'][1]:.1e} | {s['best_test_rmse'][0]:.2e} ± "
                  f"{s['best_test_rmse'][1]:.1e} | {s['test_rmse_d1'][0]:.2e} | {s['test_rmse_d2'][0]:.2e} "
                  f"| {s['epochs'][0]:.0f} | {s['seconds'][0]:.0f} |")
    for other in ("first", "second"):
        for key in ("test_rmse", "best_test_rmse"):
            if f"ratio_value_to_{other}_{key}" in summary:
                m, sd, rs = summary[f"ratio_value_to_{other}_{key}"]
                print(f"value / {other} order ({key.replace('_', ' ')}): {m:.1f}x ± {sd:.1f} "
                      f"(per seed {', '.join(f'{r:.1f}' for r in rs)})")
    for name in OBJECTIVES:
        if f"ratio_{name}_to_second_test_rmse" in summary:
            m, sd, rs = summary[f"ratio_{name}_to_second_test_rmse"]
            print(f"{name} / second (test RMSE): {m:.2f} ± {sd:.2f} (per seed {', '.join(f'{r:.2f}' for r in rs)})")


def write(path: str, meta: dict, runs: list[dict], figure: bool = True) -> None:
    write_text_atomic(path, json.dumps({"meta": meta, "summary": summarize(runs), "runs": runs}, indent=2) + "\n")
    if figure:
        plot(runs, os.path.splitext(path)[0] + ".png", meta["view"])
    print(f"wrote {path}")


def read_results(path: str, parser: argparse.ArgumentParser, flag: str) -> dict:
    """A results file of this benchmark (keys ``meta`` and ``runs``), or ``parser.error`` naming ``flag``."""
    try:
        part = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        parser.error(f"{flag}: cannot read {path}: {err}")
    if not isinstance(part, dict) or not {"meta", "runs"} <= part.keys():
        parser.error(f"{flag}: {path} is not a results file of accuracy.py (expected keys 'meta' and 'runs')")
    return part


#: The settings that make runs one experiment, with their value in files written before the
#: setting existed: results that differ in one are not seeds of the same experiment.
SETUP = (("hidden", None), ("d2_weight", D2_WEIGHT), ("n_train", None), ("n_test", None), ("train_margin", 0.0))


def check_same_setup(metas: list[dict], parser: argparse.ArgumentParser, flag: str) -> None:
    """``parser.error`` naming ``flag`` where the results' ``meta`` differ in a :data:`SETUP` key."""
    for key, default in SETUP:
        values = {json.dumps(m.get(key, default)) for m in metas}
        if len(values) != 1:
            parser.error(f"{flag}: the files mix {key} {sorted(values)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny cube, data, network and budget")
    parser.add_argument("--n-train", type=int, default=None, help="training samples (default 2000; 48 with --quick)")
    parser.add_argument("--n-test", type=int, default=None, help="test samples (default 1000; 16 with --quick)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=360.0, help="wall-clock view: training seconds of every run")
    budget.add_argument("--epochs", type=int, nargs=3, metavar=("VALUE", "FIRST", "SECOND"), default=None,
                        help="converged view: epochs of value, first- and second-order training (random ones too)")
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=["value", "first", "second"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="merge the runs of earlier results files (e.g. seeds run in parallel) into --out")
    parser.add_argument("--out", default=None, help="results JSON (a .png of the learning curves beside it)")
    parser.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                        help="converged view: checkpoint every run in DIR and continue stopped runs from there")
    parser.add_argument("--device", type=device_argument, default="cpu",
                        help="cpu (default), cuda or cuda:N: where data and training live")
    parser.add_argument("--no-figure", action="store_true", help="write the JSON only (no learning-curve .png)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, metavar="WIDTH",
                        help="hidden layer widths of the tanh MLP (default 256 256 256; 16 with --quick), "
                             "e.g. six layers: 256 256 256 256 256 256")
    parser.add_argument("--d2-weight", type=float, default=D2_WEIGHT,
                        help=f"weight of every second-order term (default {D2_WEIGHT}, Objective.second_order's)")
    parser.add_argument("--train-margin", type=float, default=0.0, metavar="M",
                        help="draw the training poses from a pose domain 1 + M times as wide (rotation angle and "
                             "translation radius), the test poses as without it (default 0)")
    args = parser.parse_args(argv)
    device = args.device
    if args.combine:
        parts = []
        for f in args.combine:
            parts.append(read_results(f, parser, "--combine"))
        views = {p["meta"].get("view", "wall-clock") for p in parts}  # files from before the views had none
        if len(views) != 1:
            parser.error(f"--combine: the files mix views {sorted(views)}")
        check_same_setup([p["meta"] for p in parts], parser, "--combine")
        runs = sorted((r for p in parts for r in p["runs"]),
                      key=lambda r: (r["seed"], list(OBJECTIVES).index(r["objective"])))
        keys = [(r["seed"], r["objective"]) for r in runs]
        if len(set(keys)) != len(keys):
            parser.error(f"--combine: the files repeat runs {sorted({k for k in keys if keys.count(k) > 1})}")
        meta = dict(parts[0]["meta"], seeds=sorted({r["seed"] for r in runs}),
                    combined=[p["meta"]["command"] for p in parts])
        report(summarize(runs))
        if args.out:
            write(args.out, meta, runs, figure=not args.no_figure)
        return 0
    torch.set_num_threads(args.threads)
    if args.quick:
        cube, n_train, n_test, hidden, seeds = benchmark_cube(quick=True), 48, 16, (16,), [0]
    else:
        cube, n_train, n_test, hidden, seeds = benchmark_cube(), 2000, 1000, (256, 256, 256), [0, 1, 2]
    seeds = seeds if args.seeds is None else args.seeds
    if args.hidden is not None:
        hidden = tuple(args.hidden)
        try:  # the library's own check of widths (positive, at most nn.MAX_WIDTH), before any data is rendered
            MLPConfig(hidden=hidden)
        except ValueError as err:
            parser.error(f"--hidden: {str(err).removeprefix('hidden: ')}")
    if not (args.d2_weight > 0 and args.d2_weight < float("inf")):
        parser.error(f"--d2-weight must be a positive finite number, got {args.d2_weight}")
    if not 0 <= args.train_margin <= 1:  # NaN fails too
        parser.error(f"--train-margin must be in [0, 1], got {args.train_margin}")
    try:  # the widened cube's own checks (max_angle at most pi, poses in front of the camera)
        training_cube(cube, args.train_margin)
    except ValueError as err:
        parser.error(f"--train-margin: {err}")
    n_train = n_train if args.n_train is None else args.n_train
    n_test = n_test if args.n_test is None else args.n_test
    if n_train < 1 or n_test < 1:
        parser.error(f"--n-train and --n-test must be positive, got {n_train} and {n_test}")
    if args.epochs is not None:
        view = "converged"
        budgets = dict(zip(OBJECTIVES, ((e, None) for e in args.epochs)))
        budgets.update({name: (args.epochs[2], None) for name in OBJECTIVES if name.startswith("second_")})
    else:
        view = "wall-clock"
        seconds = 1.0 if args.quick else args.seconds
        budgets = {name: (10**7, seconds) for name in OBJECTIVES}
    margin = f" (training poses from a domain {1 + args.train_margin:g}x as wide)" if args.train_margin else ""
    print(f"cube, {n_train} training / {n_test} test samples{margin}, MLP {list(hidden)} tanh, {view} view, budgets "
          f"{ {k: (f'{s:g} s' if s else f'{e} epochs') for k, (e, s) in budgets.items() if k in args.objectives} }, "
          f"seeds {seeds}")
    if args.checkpoint_dir is not None and view != "converged":
        parser.error("--checkpoint-dir: only with --epochs (a wall-clock run cannot be continued fairly)")
    folder = Path(args.checkpoint_dir) if args.checkpoint_dir is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        parser.error(f"--checkpoint-dir: {args.checkpoint_dir} exists and is not a folder")
    runs = run(cube, n_train, n_test, hidden, seeds, budgets, objectives=args.objectives,
               checkpoint_dir=args.checkpoint_dir, device=device, d2_weight=args.d2_weight,
               train_margin=args.train_margin)
    report(summarize(runs))
    if args.out:
        meta = {"command": command_line(argv, __file__),
                "view": view, "n_train": n_train, "n_test": n_test, "hidden": list(hidden), "seeds": seeds,
                "budgets": {k: {"epochs": e, "seconds": s} for k, (e, s) in budgets.items() if k in args.objectives},
                "d2_weight": args.d2_weight, "train_margin": args.train_margin,
                "objectives": {k: list(v.names) + [f"weights {[t.weight for t in v.terms]}"]
                               for k, v in build_objectives(args.d2_weight).items() if k in args.objectives},
                **machine_info(device)}
        write(args.out, meta, runs, figure=not args.no_figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
