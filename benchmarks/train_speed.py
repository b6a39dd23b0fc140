"""Cost of a training step per objective and implementation, and time to accuracy.

Part 1, step cost (same run, same network, same batches): seconds per training sample of a
full step (batch gather, loss, backward, optimiser) for

* ``value``: :math:`N(x)` only (the baseline every ratio divides by);
* ``first`` and ``second`` with the Taylor-mode jet (the fast path);
* ``first`` and ``second`` with nested ``torch.func.jvp`` (the straightforward path);
* ``second`` along ``k`` random pairs of directions, ``k = 1, 2, 4`` (both derivative terms
  random, unbiased: ``1 + 3k`` jet rows);
* ``second`` with the full first order and a random second order (``1 + 6 + 3k`` rows);
* ``second`` with the grid of ``k x k`` pairs, ``k = 2, 3`` (``1 + 2k + k**2`` rows);
* the robustness objectives of :mod:`manifoldtrain.robustness.suite` at strength 0.03:
  ``invariance-noise`` (values plus one noisy forward and backward pass), ``invariance-jacobian``
  (values plus 2 random input directions in the jet pass), ``oracle-random`` (second order plus
  2 random perturbations matched to the Taylor oracle) and ``oracle-hessian`` (second order plus
  the top direction of the error operator, 2 subspace iterations of one ``vjp`` and one ``jvp``);
  ``second`` is their derivative-training baseline.

Every variant runs the public ``Trainer.batch`` and ``Trainer.step`` (batch gather of the
orders the objective uses, loss, backward, AdamW), timed per step.

Goals: a full second-order step at most 28x a value step (``1 + 6 + 21`` jet rows, the floor
for exact jets); one random pair of directions at most 4x.

Part 2, time to accuracy: train value, then second order, on the same data and network,
evaluating the test RMSE as they go; report the best RMSE value training reaches and when
second-order training first beats it.

Usage::

    python benchmarks/train_speed.py                 # ~15 minutes on 2 cores
    python benchmarks/train_speed.py --quick         # smoke run, seconds
    python benchmarks/train_speed.py --out benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.network_jets import nested_jvp_rows, taylor_rows
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import Trainer, TrainConfig, flush_denormals


def robust_variants() -> list[tuple]:
    from manifoldtrain.robustness.suite import robustness_objective

    names = ("invariance-noise", "invariance-jacobian", "oracle-random", "oracle-hessian")
    return [(name, "taylor", robustness_objective(name, 0.03), taylor_rows) for name in names]


def step_costs(train, hidden, batch_size, steps, seed=0, robust_only=False) -> list[dict]:
    variants = [
        ("value", "-", Objective.value(), taylor_rows),
        ("first", "taylor", Objective.first_order(), taylor_rows),
        ("second", "taylor", Objective.second_order(), taylor_rows),
        ("first", "nested jvp", Objective.first_order(), nested_jvp_rows),
        ("second", "nested jvp", Objective.second_order(), nested_jvp_rows),
        ("second", "random k=1", Objective.second_order(directions=1), taylor_rows),
        ("second", "random k=2", Objective.second_order(directions=2), taylor_rows),
        ("second", "random k=4", Objective.second_order(directions=4), taylor_rows),
        ("second", "grid k=2", Objective.second_order(directions=2, grid=True), taylor_rows),
        ("second", "grid k=3", Objective.second_order(directions=3, grid=True), taylor_rows),
        ("second", "full d1, random d2 k=1",
         Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2, 0.03, directions=1))), taylor_rows),
    ]
    if robust_only:
        variants = [variants[0], variants[2]]
    variants += robust_variants()
    rows = []
    for objective_name, impl, objective, rows_fn in variants:
        model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed)
        cfg = TrainConfig(batch_size=batch_size, progress=False, seed=seed)
        trainer = Trainer(model, objective, train, None, cfg, rows_fn=rows_fn)
        gen = torch.Generator().manual_seed(seed)
        times = []
        n_steps = steps if impl != "nested jvp" else max(5, steps // 6)
        for k in range(n_steps + 2):  # two warm-up steps
            idx = torch.randint(len(train), (batch_size,), generator=gen)
            t0 = time.perf_counter()
            trainer.step(trainer.batch(idx))
            if k >= 2:
                times.append(time.perf_counter() - t0)
        # The fastest step: the machine's own speed, least disturbed by whatever else runs on it
        # (the median is kept too; on a shared machine it varied by 20-60% between runs).
        rows.append({"objective": objective_name, "implementation": impl, "terms": list(objective.names),
                     "seconds_per_sample": min(times) / batch_size,
                     "median_seconds_per_sample": statistics.median(times) / batch_size})
    base = rows[0]["seconds_per_sample"]
    for r in rows:
        r["ratio_to_value"] = r["seconds_per_sample"] / base
    return rows


def estimate_spread(train, hidden, seed=0, draws=200) -> list[dict]:
    """Relative spread of the random-direction estimates of the derivative terms on one batch of
    256 training samples, for an untrained network (standard deviation over draws / full value)."""
    model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed)
    x, y = train.inputs[:256], train.targets[:256]
    trainer = Trainer(model, Objective.second_order(), train, None, TrainConfig(progress=False))
    with torch.no_grad():
        full = Objective.second_order().losses(model, x, y, trainer.scales)
        out = []
        for k in (1, 2, 4):
            g = torch.Generator().manual_seed(k)
            samples = [Objective.second_order(directions=k).losses(model, x, y, trainer.scales, generator=g)
                       for _ in range(draws)]
            for order in (1, 2):
                values = [float(s[f"d{order} ({k} random)"]) for s in samples]
                exact = float(full[f"d{order} (full)"])
                out.append({"order": order, "k": k, "full": exact, "mean": statistics.fmean(values),
                            "relative_sd": statistics.stdev(values) / exact})
    return out


def time_to_accuracy(train, test, hidden, budget, batch_size, seed=0) -> dict:
    out = {}
    for name, objective in (("value", Objective.value()), ("second", Objective.second_order())):
        model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed)
        cfg = TrainConfig(epochs=10**6, time_budget=budget, batch_size=batch_size, eval_every=0,
                          eval_interval=budget / 40, eval_overhead=None, progress=False, seed=seed)  # every point
        history = Trainer(model, objective, train, test, cfg).fit()
        out[name] = [(r["seconds"], r["test"]["rmse"]) for r in history.records if "test" in r]
    best_value = min(r for _, r in out["value"])
    t_value = next(t for t, r in out["value"] if r == best_value)
    t_second = next((t for t, r in out["second"] if r <= best_value), None)
    return {
        "budget_seconds": budget,
        "best_value_rmse": best_value,
        "value_seconds_to_best": t_value,
        "second_seconds_to_match": t_second,
        "best_second_rmse": min(r for _, r in out["second"]),
        "curves": out,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data and network")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    parser.add_argument("--no-time-to-accuracy", action="store_true", help="step costs and estimate spreads only")
    parser.add_argument("--robust-only", action="store_true",
                        help="step costs of value, second and the robustness objectives only (implies --no-time-to-accuracy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        cube, n_train, n_test, hidden, batch, steps, budget = Cube(image_size=15), 64, 32, (32, 32), 16, 4, 2.0
    else:
        cube, n_train, n_test, hidden, batch, steps, budget = Cube(), 1000, 1000, (256, 256, 256), 64, 60, 240.0
    with flush_denormals():
        data = generate_jets(cube, n_train + n_test, seed=0, progress=not args.quick)
        train, test = data.split(n_test, seed=0)
        print(f"step cost, MLP {list(hidden)} tanh, batch {batch}, torch {torch.__version__}, {args.threads} threads")
        print("| objective | implementation | us/sample | x value step |\n|---|---|---|---|")
        rows = step_costs(train, hidden, batch, steps, robust_only=args.robust_only)
        for r in rows:
            print(f"| {r['objective']} | {r['implementation']} | {r['seconds_per_sample'] * 1e6:.0f} | {r['ratio_to_value']:.1f}x |")
        spread = [] if args.robust_only else estimate_spread(train, hidden, draws=20 if args.quick else 200)
        print("random-direction estimates, one batch of 256, untrained network: relative sd over draws")
        for r in spread:
            print(f"  order {r['order']}, k={r['k']}: sd {r['relative_sd']:.2f} x the full term "
                  f"(mean {r['mean']:.3g}, full {r['full']:.3g})")
        tta = None
        if not (args.no_time_to_accuracy or args.robust_only):
            print(f"time to accuracy, {n_train} training samples, {budget:g} s each:")
            tta = time_to_accuracy(train, test, hidden, budget, batch)
            t2 = tta["second_seconds_to_match"]
            print(
                f"  value: best test RMSE {tta['best_value_rmse']:.3e} after {tta['value_seconds_to_best']:.0f} s; "
                f"second order: " + (f"reaches it after {t2:.0f} s" if t2 is not None else "does not reach it")
                + f", best {tta['best_second_rmse']:.3e}"
            )
    if args.out:
        meta = {"command": command_line(argv, __file__),
                "n_train": n_train, "hidden": list(hidden), "batch_size": batch, **machine_info()}
        write_text_atomic(args.out, json.dumps({"meta": meta, "step_cost": rows, "estimate_spread": spread, "time_to_accuracy": tta}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
