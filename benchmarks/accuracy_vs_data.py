"""The paper's 25x against data size: value vs first vs second order at 1000 ... 8000+ samples.

``accuracy.py`` measures the three objectives at one data size, each trained to convergence
(``--epochs``). This script runs it over several training-set sizes and seeds, one
process per (size, seed, objective) on ``--threads`` threads (default 1), ``--jobs`` at a
time, each writing its own part file under ``--work`` (``n{N}/s{S}_{objective}.json``, atomically). A part that
exists is not run again, and a run in progress checkpoints about 40 times along its budget
(``n{N}/s{S}_{objective}.checkpoints``, removed once its part is written) and continues
from there, so the sweep can be stopped and continued at any time, spread over sessions or
machines (copy the part files together), and extended by more sizes or seeds later.

Budgets: ``--epochs VALUE FIRST SECOND`` are each objective's epochs up to its reference size
(``--reference-size VALUE FIRST SECOND``, or one size for all three); a larger set trains
``reference / N`` times as many, the same number of optimiser steps (batch 64) as at the
reference size. The default rule, ``--epochs 1000 1000 800 --reference-size 2000 8000 8000``,
is what the convergence checks of docs/accuracy.rst found: value training (1000 epochs at
2000 samples, ``accuracy_converged.json``) is converged at equal steps and overfits if
trained longer (4000 samples at twice its budget: 17% worse), so it keeps equal steps above
2000; second-order training is converged at 800 epochs with 2000 samples (twice that gains
0.1%) but not at 400 with 4000 (800 gains 8-15%), so it needs more steps as the data grow
and trains 800 epochs at every size up to 8000 (first order alike, by analogy, unchecked).
Every part records its epochs, and a sweep refuses parts trained at another budget than its
rule gives (another rule belongs in another ``--work``). Every run reports how much its test
RMSE still fell over the last quarter of its budget (``tail_drop``: RMSE at 75% of the budget
over the final RMSE, minus 1). Under the trainer's cosine schedule that includes the gain of
annealing the learning rate, so it is not a convergence test by itself: a small value says
the curve was flat; a large one asks for a run at twice the budget to tell annealing from
unfinished training.

Each size has its own data: ``accuracy.py``'s seed ``S`` renders ``N + n_test`` cube poses with
seed ``1000 + S`` and splits off ``n_test`` (1000) test samples; every objective at that
(size, seed) sees the same data, test set and initial weights, so the ratio value / second
is paired per seed.

The summary (``--out``, JSON with a two-panel figure beside it) gives, per size, the test RMSE
of each objective and the ratios value / second and value / first as mean, sample standard
deviation and range over seeds, and a least-squares fit of ``log ratio = a + b log N`` over
the per-seed ratios: the fitted ratio at each size, the slope ``b``, and the size at which the
fit reaches ``--goal`` (25x), marked *extrapolated* when it lies beyond the largest size
measured; a bootstrap over seeds (resampling each size's seeds) gives its 5-95% interval.

Usage::

    # the sweep (resumable; a second-order run at 4000 samples is 2-4.5 hours on one core of a 2-core VM)
    python benchmarks/accuracy_vs_data.py --work acc_data --sizes 1000 2000 4000 8000 --seeds 0 1 2 3 4 --jobs 2
    # one run at a time on both cores of an idle 2-core machine (8000 samples, second order: ~95 min)
    python benchmarks/accuracy_vs_data.py --work acc_data --sizes 8000 --seeds 0 --jobs 1 --threads 2
    # reuse the 2000-sample runs of accuracy_converged.json (same protocol, seeds 0-2)
    python benchmarks/accuracy_vs_data.py --work acc_data --import benchmarks/results/accuracy_converged.json
    # summary and figure of whatever parts exist
    python benchmarks/accuracy_vs_data.py --work acc_data --summarize --out benchmarks/results/accuracy_vs_data.json
    # on a GPU: several runs share it (the data and the protocol are the same as on the CPU)
    python benchmarks/accuracy_vs_data.py --work acc_gpu --sizes 1000 2000 4000 8000 16000 --device cuda --jobs 8
    python benchmarks/accuracy_vs_data.py --quick --work /tmp/q   # smoke run, in-process, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from manifoldtrain.devices import device_argument
from manifoldtrain.records import write_text_atomic

HERE = Path(__file__).resolve().parent
OBJECTIVES = ("value", "first", "second")
PART_KEYS = {"meta", "runs"}


def epochs_at(size: int, reference_epochs: tuple[int, int, int],
              reference_size: int | tuple[int, int, int]) -> tuple[int, ...]:
    """Epoch budgets (value, first, second) at ``size``: each objective's reference epochs up to
    its reference size (one for all three, or one each), scaled by ``reference / size`` above it
    (the same optimiser steps as at the reference size)."""
    sizes = (reference_size,) * 3 if isinstance(reference_size, int) else tuple(reference_size)
    return tuple(e if size <= r else max(1, round(e * r / size)) for e, r in zip(reference_epochs, sizes))


def part_path(work: Path, size: int, seed: int, objective: str) -> Path:
    return work / f"n{size}" / f"s{seed}_{objective}.json"


def _accuracy_argv(size, seed, objective, epochs, n_test, quick, out, device="cpu", threads=1) -> list[str]:
    argv = ["--n-train", str(size), "--n-test", str(n_test), "--epochs", *map(str, epochs), "--threads", str(threads),
            "--seeds", str(seed), "--objectives", objective, "--out", str(out),
            "--checkpoint-dir", str(_checkpoints(out)), "--no-figure"]
    if device != "cpu":
        argv += ["--device", device]
    return (["--quick"] + argv) if quick else argv


def _checkpoints(out: Path) -> Path:
    """Where a part's run checkpoints while it trains (removed once the part is written)."""
    return out.with_suffix(".checkpoints")


def _done(out: Path) -> None:
    shutil.rmtree(_checkpoints(out), ignore_errors=True)


def run_parts(work: Path, jobs_list: list[tuple[int, int, str]], budgets: dict, n_test: int, jobs: int,
              quick: bool, device: str = "cpu", threads: int = 1) -> list[Path]:
    """Run the missing parts, ``jobs`` processes at a time (in this process when ``jobs == 1``),
    each on ``threads`` CPU threads, on ``device`` (several processes may share one GPU)."""
    todo = [(n, s, o) for n, s, o in jobs_list if not part_path(work, n, s, o).exists()]
    done = len(jobs_list) - len(todo)
    print(f"{len(jobs_list)} runs, {done} already done, {len(todo)} to run, {jobs} at a time", flush=True)
    written = []
    if jobs == 1:
        import runpy

        accuracy_main = runpy.run_path(str(HERE / "accuracy.py"))["main"]
        for n, s, o in todo:
            out = part_path(work, n, s, o)
            out.parent.mkdir(parents=True, exist_ok=True)
            if accuracy_main(_accuracy_argv(n, s, o, budgets[n], n_test, quick, out, device, threads)) != 0:
                raise SystemExit(f"accuracy.py failed for size {n}, seed {s}, {o}")
            _done(out)
            written.append(out)
        return written
    running: list[tuple[subprocess.Popen, Path, object, float]] = []
    queue = list(todo)
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            n, s, o = queue.pop(0)
            out = part_path(work, n, s, o)
            out.parent.mkdir(parents=True, exist_ok=True)
            log = open(out.with_suffix(".log"), "w")
            cmd = [sys.executable, str(HERE / "accuracy.py"),
                   *_accuracy_argv(n, s, o, budgets[n], n_test, quick, out, device, threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out, log,
                            time.time()))
            print(f"started size {n} seed {s} {o} -> {out}", flush=True)
        time.sleep(0.2 if quick else 5)
        for item in list(running):
            proc, out, log, t0 = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode == 0 and out.exists():
                    _done(out)
                    written.append(out)
                    print(f"finished {out} in {time.time() - t0:.0f} s", flush=True)
                else:
                    failed.append(out)
                    print(f"FAILED {out} (rc {proc.returncode}), see {out.with_suffix('.log')}", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {', '.join(map(str, failed))}")
    return written


def budget_mismatch(run: dict, size: int, budgets_for) -> str | None:
    """Why ``run`` (at ``size`` samples) does not follow the sweep's rule, or None if it does."""
    expected = dict(zip(OBJECTIVES, budgets_for(size)))[run["objective"]]
    if run["epochs"] == expected:
        return None
    return (f"trained {run['objective']} for {run['epochs']} epochs at {size} samples; this sweep's budget there is "
            f"{expected}")


def import_results(work: Path, path: Path, budgets_for) -> int:
    """Split an ``accuracy.py --epochs`` results file into part files (only runs with this sweep's budgets)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"--import: cannot read {path}: {err}")
    if not isinstance(data, dict) or not PART_KEYS <= data.keys():
        raise SystemExit(f"--import: {path} is not a results file of accuracy.py (expected keys 'meta' and 'runs')")
    meta = data["meta"]
    if meta.get("view") != "converged":
        raise SystemExit(f"--import: {path} is a {meta.get('view')!r} run; only the converged view (--epochs) fits")
    size = int(meta["n_train"])
    count = 0
    for r in data["runs"]:
        name = r["objective"]
        if name not in OBJECTIVES:
            continue
        problem = budget_mismatch(r, size, budgets_for)
        if problem is not None:
            raise SystemExit(f"--import: {path} {problem} (see --epochs and --reference-size)")
        out = part_path(work, size, r["seed"], name)
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        part_meta = dict(meta, seeds=[r["seed"]], imported_from=str(path))
        write_text_atomic(out, json.dumps({"meta": part_meta, "runs": [r]}, indent=2) + "\n")
        count += 1
    return count


def load_runs(work: Path, budgets_for=None) -> list[dict]:
    """Every run of the part files under ``work``; with ``budgets_for`` (size -> epochs of value,
    first, second), a part trained for other epochs than the rule gives at its size is refused."""
    runs = []
    for f in sorted(work.glob("n*/s*_*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"{f} cannot be read as a part file of this sweep: {err}")
        if not isinstance(data, dict) or not PART_KEYS <= data.keys():
            raise SystemExit(f"{f} is not a part file of this sweep")
        size = int(data["meta"]["n_train"])
        for r in data["runs"]:
            if r.get("objective") not in OBJECTIVES:
                raise SystemExit(f"{f} holds a run of objective {r.get('objective')!r}; this sweep compares "
                                 f"{', '.join(OBJECTIVES)}")
            problem = None if budgets_for is None else budget_mismatch(r, size, budgets_for)
            if problem is not None:
                raise SystemExit(f"{f} {problem} (give the --epochs and --reference-size the parts were run with; "
                                 "parts at another budget belong in another --work)")
            runs.append(dict(r, n_train=size, n_test=int(data["meta"]["n_test"]),
                             device=data["meta"].get("device", "cpu")))
    return runs


def tail_drop(run: dict) -> float:
    """How much the test RMSE still fell over the last quarter of the budget: RMSE(75%) / final - 1."""
    epochs = run["curve_epochs"]
    errs = [e for _, e in run["curve"]]
    at = 0.75 * run["epochs"]
    k = min(range(len(epochs)), key=lambda i: abs(epochs[i] - at))
    return errs[k] / run["test_rmse"] - 1.0


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares of log r = a + b log n; None with fewer than two sizes."""
    if len({n for n, _ in points}) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(r) for _, r in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _size_for(fit: tuple[float, float], goal: float) -> float | None:
    a, b = fit
    return math.exp((math.log(goal) - a) / b) if b > 0 else None


def summarize(runs: list[dict], goal: float, bootstrap: int = 2000, seed: int = 0) -> dict:
    sizes = sorted({r["n_train"] for r in runs})
    by = {(r["n_train"], r["seed"], r["objective"]): r for r in runs}
    table = []
    ratio_points = {"second": [], "first": []}
    per_size_seeds = {"second": {}, "first": {}}
    for n in sizes:
        row = {"n_train": n}
        for o in OBJECTIVES:
            rs = [r for (m, _, oo), r in sorted(by.items()) if m == n and oo == o]
            if rs:
                row[o] = {"seeds": [r["seed"] for r in rs], "test_rmse": _mean_sd([r["test_rmse"] for r in rs]),
                          "best_test_rmse": _mean_sd([r["best_test_rmse"] for r in rs]),
                          "epochs": rs[0]["epochs"], "tail_drop_max": max(tail_drop(r) for r in rs),
                          "seconds": statistics.mean(r["seconds"] for r in rs),
                          "devices": sorted({r.get("device", "cpu") for r in rs})}
        for other in ("second", "first"):
            seeds = sorted(s for (m, s, o) in by if m == n and o == "value" and (n, s, other) in by)
            if not seeds:
                continue
            ratios = [by[n, s, "value"]["test_rmse"] / by[n, s, other]["test_rmse"] for s in seeds]
            best = [by[n, s, "value"]["best_test_rmse"] / by[n, s, other]["test_rmse"] for s in seeds]
            mean, sd = _mean_sd(ratios)
            row[f"value_over_{other}"] = {"seeds": seeds, "per_seed": ratios, "mean": mean, "sd": sd,
                                          "min": min(ratios), "max": max(ratios),
                                          "against_value_best": _mean_sd(best)}
            ratio_points[other] += [(n, r) for r in ratios]
            per_size_seeds[other][n] = ratios
        table.append(row)
    out = {"sizes": sizes, "table": table, "goal": goal}
    rng = random.Random(seed)
    for other in ("second", "first"):
        fit = _fit(ratio_points[other])
        if fit is None:
            continue
        a, b = fit
        n_goal = _size_for(fit, goal)
        boots = []
        groups = per_size_seeds[other]
        for _ in range(bootstrap):
            pts = [(n, rng.choice(rs)) for n, rs in groups.items() for _ in rs]
            f = _fit(pts)
            n_b = _size_for(f, goal) if f else None
            boots.append(n_b if n_b is not None else math.inf)
        boots.sort()
        q = (lambda p: boots[min(len(boots) - 1, int(p * len(boots)))]) if boots else (lambda p: None)
        out[f"fit_value_over_{other}"] = {
            "model": "ratio = exp(a) * n_train ** b (least squares on log ratio over per-seed ratios)",
            "a": a, "b": b, "fitted": {str(n): math.exp(a + b * math.log(n)) for n in sizes},
            "size_for_goal": n_goal, "size_for_goal_interval_5_95": [q(0.05), q(0.95)],
            "goal_extrapolated": n_goal is None or n_goal > max(sizes),
            "largest_size_measured": max(sizes),
        }
    return out


def report(summary: dict) -> None:
    print("\n| train samples | value RMSE | first RMSE | second RMSE | value / first | value / second (mean ± sd, "
          "range, seeds) | epochs v/f/s | max tail drop |\n|---|---|---|---|---|---|---|---|")
    for row in summary["table"]:
        def rmse(o):
            return f"{row[o]['test_rmse'][0]:.2e} ± {row[o]['test_rmse'][1]:.1e}" if o in row else ""

        def ratio(o, detail=False):
            if f"value_over_{o}" not in row:
                return ""
            r = row[f"value_over_{o}"]
            text = f"{r['mean']:.1f}x ± {r['sd']:.1f}"
            return text + (f" ({r['min']:.1f}-{r['max']:.1f}, {len(r['seeds'])} seeds)" if detail else "")
        epochs = "/".join(str(row[o]["epochs"]) if o in row else "-" for o in OBJECTIVES)
        tails = max((row[o]["tail_drop_max"] for o in OBJECTIVES if o in row), default=float("nan"))
        print(f"| {row['n_train']} | {rmse('value')} | {rmse('first')} | {rmse('second')} | {ratio('first')} | "
              f"{ratio('second', True)} | {epochs} | {tails:.1%} |")
    for other in ("second", "first"):
        fit = summary.get(f"fit_value_over_{other}")
        if fit:
            n_goal, (lo, hi) = fit["size_for_goal"], fit["size_for_goal_interval_5_95"]
            where = "none (ratio does not grow)" if n_goal is None else f"{n_goal:.3g}"
            mark = " (extrapolated)" if fit["goal_extrapolated"] else ""
            print(f"fit value / {other}: ratio ~ n^{fit['b']:.2f}; reaches {summary['goal']:g}x at n = {where}{mark}, "
                  f"5-95% over seeds {lo:.3g}-{hi:.3g}")


def plot(runs: list[dict], summary: dict, path: str) -> None:
    from matplotlib.figure import Figure

    from manifoldtrain.plotting import save_figure

    colors = {"value": "tab:blue", "first": "tab:orange", "second": "tab:green"}
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for o in OBJECTIVES:
        pts = [(r["n_train"], r["test_rmse"]) for r in runs if r["objective"] == o]
        if not pts:
            continue
        left.plot(*zip(*pts), ".", color=colors[o], alpha=0.5)
        rows = [row for row in summary["table"] if o in row]
        left.errorbar([row["n_train"] for row in rows], [row[o]["test_rmse"][0] for row in rows],
                      yerr=[row[o]["test_rmse"][1] for row in rows], fmt="-o", color=colors[o], label=o, capsize=3)
    left.set(xscale="log", yscale="log", xlabel="training samples", ylabel="clean test RMSE",
             title="Cube: each objective trained to convergence")
    left.legend()
    largest = max(summary["sizes"])
    for other, color in (("second", "tab:green"), ("first", "tab:orange")):
        rows = [row for row in summary["table"] if f"value_over_{other}" in row]
        if not rows:
            continue
        for row in rows:
            r = row[f"value_over_{other}"]
            right.plot([row["n_train"]] * len(r["per_seed"]), r["per_seed"], ".", color=color, alpha=0.5)
        right.errorbar([row["n_train"] for row in rows], [row[f"value_over_{other}"]["mean"] for row in rows],
                       yerr=[row[f"value_over_{other}"]["sd"] for row in rows], fmt="o", color=color, capsize=3,
                       label=f"value / {other} (mean ± sd over seeds)")
        fit = summary.get(f"fit_value_over_{other}")
        if fit:
            a, b = fit["a"], fit["b"]
            end = max(largest, min(fit["size_for_goal"] or largest, 16 * largest)) * 1.3
            xs_in = [min(summary["sizes"]) * (largest / min(summary["sizes"])) ** (k / 50) for k in range(51)]
            xs_out = [largest * (end / largest) ** (k / 50) for k in range(51)]
            right.plot(xs_in, [math.exp(a + b * math.log(x)) for x in xs_in], "-", color=color, alpha=0.7)
            right.plot(xs_out, [math.exp(a + b * math.log(x)) for x in xs_out], "--", color=color, alpha=0.7,
                       label=f"fit n^{b:.2f}, extrapolated" if other == "second" else None)
    right.axhline(summary["goal"], color="k", lw=0.8, ls=":", label=f"paper: {summary['goal']:g}x")
    right.set(xscale="log", xlabel="training samples", ylabel="value RMSE / derivative-trained RMSE",
              title="Accuracy ratio against data size")
    right.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--work", required=True, help="folder of the part files (created; parts are kept)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--epochs", type=int, nargs=3, metavar=("VALUE", "FIRST", "SECOND"), default=[1000, 1000, 800],
                        help="each objective's epochs up to its reference size (default 1000 1000 800, as "
                             "accuracy_converged.json at 2000 samples)")
    parser.add_argument("--reference-size", type=int, nargs="+", default=[2000, 8000, 8000],
                        metavar="N", help="one size, or one per objective (value first second; default 2000 8000 "
                                          "8000): a larger set trains reference/N times the epochs, the same "
                                          "optimiser steps as at the reference size")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (1: in this process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each run (default 1; jobs x threads should not exceed the idle cores: a "
                             "thread on a busy core stalls its run's every step)")
    parser.add_argument("--import", dest="imports", nargs="+", default=[], metavar="JSON",
                        help="first split these accuracy.py --epochs results into part files")
    parser.add_argument("--summarize", action="store_true", help="run nothing; summarise the parts that exist")
    parser.add_argument("--goal", type=float, default=25.0, help="the ratio to reach (the paper's 25x)")
    parser.add_argument("--out", default=None, help="summary JSON (a .png of the figure beside it)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny cube and network, in seconds")
    parser.add_argument("--device", type=device_argument, default="cpu",
                        help="cpu (default), cuda or cuda:N: where every run renders its data and trains (--jobs "
                             "processes share it); each part records its device")
    args = parser.parse_args(argv)
    args.device = str(args.device)
    for name, values in (("--sizes", args.sizes), ("--epochs", args.epochs)):
        if any(v < 1 for v in values):
            parser.error(f"{name} must be positive integers, got {values}")
    if len(args.reference_size) not in (1, 3) or min(args.reference_size) < 1:
        parser.error(f"--reference-size: expected one positive size or three (value first second), "
                     f"got {args.reference_size}")
    if args.jobs < 1 or args.n_test < 1 or args.threads < 1:
        parser.error("--jobs, --threads and --n-test must be positive")
    reference = tuple(args.reference_size * 3 if len(args.reference_size) == 1 else args.reference_size)
    if args.quick:
        args.n_test = min(args.n_test, 16)
    work = Path(args.work)
    if work.exists() and not work.is_dir():
        parser.error(f"--work: {work} exists and is not a folder")
    work.mkdir(parents=True, exist_ok=True)

    def budgets_for(n):
        return epochs_at(n, tuple(args.epochs), reference)

    load_runs(work, budgets_for)  # the parts there follow this rule (checked before anything is added or run)
    for path in args.imports:
        print(f"imported {import_results(work, Path(path), budgets_for)} runs from {path}")
    if not args.summarize and not args.imports:
        jobs_list = [(n, s, o) for n in args.sizes for s in args.seeds for o in args.objectives]
        run_parts(work, jobs_list, {n: budgets_for(n) for n in args.sizes}, args.n_test, args.jobs, args.quick,
                  args.device, args.threads)
    runs = load_runs(work, budgets_for)
    if not runs:
        print(f"no runs in {work} yet")
        return 0
    summary = summarize(runs, args.goal)
    report(summary)
    if args.out:
        meta = {"command": " ".join(["python", "benchmarks/accuracy_vs_data.py", *(argv or sys.argv[1:])]),
                "reference_epochs": args.epochs, "reference_size": list(reference),
                "budgets": {str(n): budgets_for(n) for n in summary["sizes"]}}
        write_text_atomic(args.out, json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
        plot(runs, summary, os.path.splitext(args.out)[0] + ".png")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
