"""The paper's headline: value vs first- vs second-order training on the cube, several seeds.

For each seed: one data set (the seed draws the points and splits them), one network
(tanh MLP, the seed draws its initial weights), and the same wall-clock budget for each
objective:

* ``value``: ``Objective.value()``;
* ``first``: ``Objective.first_order()`` (relative weights 1, 1);
* ``second``: ``Objective.second_order()`` (relative weights 1, 1, 0.03).

The budget is long enough for value and first-order training to plateau (their learning
curves are recorded), so the comparison is both *equal wall-clock* and, for those two,
*trained to convergence*. Reported per objective: final clean test RMSE (mean and spread
over seeds), the best test RMSE along the run (what early stopping on the test set would
give, a view that favours value training), and the ratios value / second of both.

Usage::

    python benchmarks/accuracy.py --out benchmarks/results/accuracy.json   # ~1 hour on 2 cores
    python benchmarks/accuracy.py --quick                                 # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from manifoldtrain._io import write_text_atomic
from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.experiment import machine_info
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import Trainer, TrainConfig

OBJECTIVES = {"value": Objective.value(), "first": Objective.first_order(), "second": Objective.second_order()}


def run(cube, n_train, n_test, hidden, seconds, seeds, batch_size=64, progress=False) -> list[dict]:
    runs = []
    for seed in seeds:
        data = generate_jets(cube, n_train + n_test, seed=1000 + seed, progress=progress)
        train, test = data.split(n_test, seed=seed)
        for name, objective in OBJECTIVES.items():
            model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed)
            cfg = TrainConfig(epochs=10**7, time_budget=seconds, batch_size=batch_size, learning_rate=1e-3,
                              eval_every=0, eval_interval=seconds / 20, seed=seed, progress=progress)
            t0 = time.perf_counter()
            trainer = Trainer(model, objective, train, test, cfg)
            history = trainer.fit()
            final = evaluate(model, test)
            curve = [(r["seconds"], r["test"]["rmse"]) for r in history.records if "test" in r]
            train_fit = evaluate(model, train.subset(slice(0, n_test)), order=0).rmse
            runs.append({
                "seed": seed, "objective": name, "test_rmse": final.rmse, "test_rmse_d1": final.rmse_d1,
                "test_rmse_d2": final.rmse_d2, "best_test_rmse": min(r for _, r in curve), "train_rmse": train_fit,
                "epochs": trainer.epoch, "seconds": trainer.seconds, "wall_seconds": time.perf_counter() - t0,
                "curve": curve,
            })
            print(f"seed {seed} {name:<6} test RMSE {final.rmse:.3e} (best {runs[-1]['best_test_rmse']:.3e}, "
                  f"train {train_fit:.1e}), d1 {final.rmse_d1:.2e}, d2 {final.rmse_d2:.2e}, {trainer.epoch} epochs", flush=True)
    return runs


def summarize(runs: list[dict]) -> dict:
    out = {}
    seeds = sorted({r["seed"] for r in runs})
    for name in OBJECTIVES:
        rs = [r for r in runs if r["objective"] == name]
        out[name] = {k: (statistics.mean(r[k] for r in rs), statistics.pstdev(r[k] for r in rs))
                     for k in ("test_rmse", "best_test_rmse", "test_rmse_d1", "test_rmse_d2", "epochs")}
    by = {(r["seed"], r["objective"]): r for r in runs}
    for key in ("test_rmse", "best_test_rmse"):
        ratios = [by[s, "value"][key] / by[s, "second"][key] for s in seeds]
        out[f"ratio_value_to_second_{key}"] = (statistics.mean(ratios), statistics.pstdev(ratios), ratios)
        ratios1 = [by[s, "value"][key] / by[s, "first"][key] for s in seeds]
        out[f"ratio_value_to_first_{key}"] = (statistics.mean(ratios1), statistics.pstdev(ratios1), ratios1)
    return out


def plot(runs: list[dict], path: str) -> None:
    from matplotlib.figure import Figure

    from manifoldtrain.plotting import save_figure

    colors = {"value": "tab:blue", "first": "tab:orange", "second": "tab:green"}
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for r in runs:
        t, e = zip(*r["curve"])
        ax.plot(t, e, "-", color=colors[r["objective"]], alpha=0.8,
                label=r["objective"] if r["seed"] == min(x["seed"] for x in runs) else None)
    ax.set(xlabel="training seconds", ylabel="clean test RMSE", yscale="log",
           title="Cube: value vs derivative training, same data and wall clock (one line per seed)")
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny cube, data, network and budget")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=360.0, help="training budget of each run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="results JSON (a .png of the learning curves beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        cube, n_train, n_test, hidden, seconds, seeds = Cube(image_size=11, extent=0.6, sigma=0.08), 48, 16, (16,), 1.0, [0]
    else:
        cube, n_train, n_test, hidden, seconds, seeds = Cube(), args.n_train, args.n_test, (256, 256, 256), args.seconds, args.seeds
    print(f"cube, {n_train} training / {n_test} test samples, MLP {list(hidden)} tanh, {seconds:g} s per run, seeds {seeds}")
    runs = run(cube, n_train, n_test, hidden, seconds, seeds)
    summary = summarize(runs)
    print("\n| objective | test RMSE (mean ± sd) | best along the run | d1 RMSE | d2 RMSE | epochs |\n|---|---|---|---|---|---|")
    for name in OBJECTIVES:
        s = summary[name]
        print(f"| {name} | {s['test_rmse'][0]:.2e} ± {s['test_rmse'][1]:.1e} | {s['best_test_rmse'][0]:.2e} ± {s['best_test_rmse'][1]:.1e} "
              f"| {s['test_rmse_d1'][0]:.2e} | {s['test_rmse_d2'][0]:.2e} | {s['epochs'][0]:.0f} |")
    for key in ("test_rmse", "best_test_rmse"):
        m, sd, rs = summary[f"ratio_value_to_second_{key}"]
        print(f"value / second order ({key.replace('_', ' ')}): {m:.1f}x ± {sd:.1f} (per seed {', '.join(f'{r:.1f}' for r in rs)})")
    if args.out:
        meta = {"command": "python " + " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
                "n_train": n_train, "n_test": n_test, "hidden": list(hidden), "seconds_per_run": seconds, "seeds": seeds,
                "objectives": {k: list(v.names) + [f"weights {[t.weight for t in v.terms]}"] for k, v in OBJECTIVES.items()},
                **machine_info()}
        write_text_atomic(args.out, json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
        plot(runs, os.path.splitext(args.out)[0] + ".png")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
