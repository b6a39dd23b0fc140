"""Phase retrieval: networks (value, derivative-trained, oracle-robust) against HIO/ER, a direct fit and the CRB.

One :class:`~manifoldtrain.manifolds.PhaseRetrieval` data set (order-2 jets), the same tanh
MLP and initial weights, the same wall-clock budget per run, trained four ways:

* ``value``: parameters from the measurement, values only;
* ``first``: plus first derivatives along the manifold;
* ``second``: plus first and second derivatives;
* ``oracle-hessian``: second-order training plus the robust oracle term along the worst
  direction of the error operator (:mod:`manifoldtrain.robustness`).

and the classical methods on the very same test inputs (:mod:`manifoldtrain.baselines`):

* ``hio-er + fit``: Fienup's HIO/ER (1000 iterations, 4 random starts, support = the object
  grid), then a least-squares fit of the parametric object modulo global phase, translation
  and twin (16 starts);
* ``hio-er + fit + refine``: then 30 Levenberg-Marquardt iterations of the parameters against
  the measurement itself (not Fienup's method: the careful user's last step);
* ``direct fit``: :func:`~manifoldtrain.baselines.multistart_fit`, no phase retrieval: a
  maximum-likelihood (Poisson deviance) Levenberg-Marquardt fit of the 6 parameters straight
  to the photon counts from 8 starts drawn from the manifold's distribution, 30 iterations;
* ``cramer-rao bound``: :func:`~manifoldtrain.baselines.cramer_rao_bound` at each test point,
  the floor of any unbiased estimator's error on the noisy patterns (0 on clean ones), in the
  same metrics (per parameter: the floor's RMS over the patterns; per pattern: the RMS over
  parameters of floor / spread).

Each is scored on clean test measurements and on Poisson-noisy ones (the manifold's
``photons``): parameter RMSE, both raw and relative (each parameter's RMSE over its standard
deviation in the test set, averaged: 1 = predicting the mean), and seconds per reconstruction.
Every method is timed on its own, batched over the patterns it is given, in float32, on the
CPU in this one process: networks, the fastest of 5 batched passes over the test set;
classical methods, one batched call (HIO/ER, its object fit, the refinement and the direct fit
each timed separately), wall-clock per pattern. Goals (issue 11, issue 24): derivative training
5x more accurate than value training at equal budget; where the networks stand against the
direct fit and the Cramer-Rao bound on noisy data (accuracy, time per pattern): the reviewer
found the fit 4-5x more accurate, and the goal is to close that gap.

Usage::

    python benchmarks/phase_retrieval.py --work pr_runs --save benchmarks/results/phase_retrieval  # ~40 min
    python benchmarks/phase_retrieval.py --quick --work /tmp/prq                                      # smoke run
    python benchmarks/phase_retrieval.py --runs first --seconds 900 --n-classical 0 --work pr_long      # no HIO/ER

``--work`` keeps every run's folder: a stopped benchmark resumes where it stopped, and a
finished run is not trained again (its checkpoint is scored). ``--n-classical 0`` skips HIO/ER
(the direct fit and the bound still run, on the whole test set).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from manifoldtrain.baselines import FitSettings, HIOSettings, MultistartSettings, cramer_rao_bound, multistart_fit, reconstruct
from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.experiment import make_data, model_from_checkpoint, run_experiment
from manifoldtrain.records import machine_info, write_text_atomic
from manifoldtrain.manifolds import PhaseRetrieval
from manifoldtrain.nn import MLPConfig
from manifoldtrain.objectives import Objective
from manifoldtrain.robustness.suite import robustness_objective
from manifoldtrain.training import TrainConfig, load_checkpoint

RUNS = {"value": ("value", None), "first": (None, None), "second": ("second", None),
        "oracle-hessian": ("oracle-hessian", 1.0)}


def _relative(estimate: torch.Tensor, truth: torch.Tensor, spread: torch.Tensor) -> tuple[float, float]:
    """Raw RMSE over all parameters, and each parameter's RMSE over its spread, averaged."""
    err = (estimate.double() - truth.double()).pow(2).mean(dim=0).sqrt()
    return float(err.pow(2).mean().sqrt()), float((err / spread).mean())


def _per_pattern(estimate: torch.Tensor, truth: torch.Tensor, spread: torch.Tensor) -> dict:
    """Median and 90th percentile over patterns of the RMS relative error (each parameter's
    error over its spread), and the fraction of patterns within 0.1 of it: robust to a few
    failed reconstructions, which dominate an RMSE."""
    e = ((estimate.double() - truth.double()) / spread).pow(2).mean(dim=1).sqrt()
    return {"median_pattern_error": float(e.median()), "p90_pattern_error": float(e.quantile(0.9)),
            "solved_fraction": float((e < 0.1).double().mean())}


def _network_scores(model: torch.nn.Module, inputs: dict[str, torch.Tensor], truth: torch.Tensor,
                    spread: torch.Tensor) -> dict:
    out = {}
    model.eval()
    for name, x in inputs.items():
        with torch.no_grad():
            model(x[:8])  # warm-up
            seconds = float("inf")
            for _ in range(5):  # the fastest of 5 batched passes
                t0 = time.perf_counter()
                pred = model(x)
                seconds = min(seconds, time.perf_counter() - t0)
        raw, rel = _relative(pred, truth, spread)
        out[name] = {"rmse": raw, "relative_rmse": rel, "ms_per_pattern": 1e3 * seconds / len(x),
                     **_per_pattern(pred, truth, spread)}
    return out


def _crb_scores(std: torch.Tensor, spread: torch.Tensor) -> dict:
    """The Cramer-Rao floor ``std [n, d]`` in the benchmark's metrics: what an unbiased,
    efficient estimator would score (its errors have variance ``std**2``)."""
    var = std.double().pow(2)
    per_param = var.mean(dim=0).sqrt()
    e = (var / spread.pow(2)).mean(dim=1).sqrt()
    return {"rmse": float(per_param.pow(2).mean().sqrt()), "relative_rmse": float((per_param / spread).mean()),
            "median_pattern_error": float(e.median()), "p90_pattern_error": float(e.quantile(0.9)),
            "solved_fraction": None, "ms_per_pattern": None}


def _zero_scores() -> dict:
    return {"rmse": 0.0, "relative_rmse": 0.0, "median_pattern_error": 0.0, "p90_pattern_error": 0.0,
            "solved_fraction": None, "ms_per_pattern": None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--work", default="pr_runs", help="folder of the runs (resumable)")
    ap.add_argument("--save", default=None, help="copy results.json there")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run")
    ap.add_argument("--seconds", type=float, default=300.0, help="training seconds per run (default 300)")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-classical", type=int, default=100,
                    help="test patterns given to HIO/ER (default 100; 0: no HIO/ER rows)")
    ap.add_argument("--fit-starts", type=int, default=8, help="starts of the direct fit (default 8)")
    ap.add_argument("--fit-iterations", type=int, default=30, help="LM iterations of the direct fit (default 30)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    manifold = PhaseRetrieval()
    hidden, n_train, n_test, n_classical, seconds = (256, 256, 256), args.n_train, args.n_test, args.n_classical, args.seconds
    hio, fit, refine = HIOSettings(), FitSettings(), 30
    direct = MultistartSettings(starts=args.fit_starts, iterations=args.fit_iterations, dtype="float32")
    if args.quick:
        hidden, n_train, n_test, n_classical, seconds = (16,), 32, 8, min(n_classical, 2), 1.0
        hio, fit, refine = HIOSettings(iterations=20, starts=1), FitSettings(starts=2, iterations=3), 2
        direct = MultistartSettings(starts=2, iterations=3, dtype="float32")
    n_classical = min(n_classical, n_test)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def experiment(name: str) -> ExperimentConfig:
        objective, strength = RUNS[name]
        return ExperimentConfig(
            manifold=manifold,
            data=DataConfig(n_train=n_train, n_test=n_test, seed=0, split_seed=0),
            model=MLPConfig(hidden=hidden, activation="tanh"),
            objective=Objective.first_order() if name == "first" else robustness_objective(objective, strength),
            train=TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, eval_interval=seconds / 5, seed=0,
                              eval_overhead=None, progress=False),  # every evaluation, as the recorded results had
            model_seed=0,
        )

    print(f"phase retrieval benchmark: {n_train} training / {n_test} test samples, MLP {list(hidden)}, "
          f"{seconds:g} s per run -> {work}", flush=True)
    train, test = make_data(experiment("second"), progress=False)
    truth = test.targets.value
    spread = truth.double().std(dim=0)  # each parameter's spread over the test set
    # The test samples' points are the targets themselves (target_kind="parameters").
    points = truth.double()
    # Poisson counts drawn exactly as manifold.measure draws them (same generator, same order),
    # kept as integers for the direct fit; the networks and HIO/ER see them in the input transform.
    noisy_counts = torch.poisson(manifold.counts(points), generator=torch.Generator().manual_seed(1))
    dtype = test.inputs.value.dtype  # float32: every method runs and is timed in it
    inputs = {"clean": test.inputs.value, "noisy": manifold.to_input(noisy_counts).to(dtype)}
    counts = {"clean": manifold.counts(points).to(dtype), "noisy": noisy_counts.to(dtype)}
    results: dict = {"methods": {}, "config": {
        "manifold": repr(manifold), "n_train": n_train, "n_test": n_test, "n_classical": n_classical, "hidden": list(hidden),
        "seconds_per_run": seconds, "hio": repr(hio), "fit": repr(fit), "refine": refine, "direct_fit": repr(direct),
        "dtype": str(dtype).replace("torch.", ""), "device": "cpu"}}
    for name in args.runs:
        res = run_experiment(experiment(name), work / name, data=(train, test), progress=False)
        model = model_from_checkpoint(load_checkpoint(work / name / res["checkpoint"]))
        scores = _network_scores(model, inputs, truth, spread)
        scores.update(epochs=res["epochs"], seconds=res["seconds"])
        results["methods"][name] = scores
        print(f"  {name:16s} clean rel. RMSE {scores['clean']['relative_rmse']:.3f}  noisy {scores['noisy']['relative_rmse']:.3f}"
              f"  ({res['epochs']} epochs, {scores['clean']['ms_per_pattern']:.4f} ms/pattern)", flush=True)

    sub = slice(0, n_classical)
    for label, x in inputs.items():
        if n_classical == 0:
            break
        rec = reconstruct(manifold, x[sub], hio, fit, refine=refine)
        n_sub = len(rec.params)
        for method, est, secs in (("hio-er + fit", rec.fitted, rec.seconds_phase + rec.seconds_fit),
                                  ("hio-er + fit + refine", rec.params, rec.seconds)):
            raw, rel = _relative(est, truth[sub], spread)
            results["methods"].setdefault(method, {})[label] = {
                "rmse": raw, "relative_rmse": rel, "ms_per_pattern": 1e3 * secs / n_sub,
                "ms_per_pattern_hio": 1e3 * rec.seconds_phase / n_sub,
                "ms_per_pattern_object_fit": 1e3 * rec.seconds_fit / n_sub,
                "ms_per_pattern_refine": 1e3 * rec.seconds_refine / n_sub,
                "median_fourier_error": float(rec.fourier_error.median()), **_per_pattern(est, truth[sub], spread)}
        print(f"  classical ({label}): HIO/ER+fit rel. RMSE {results['methods']['hio-er + fit'][label]['relative_rmse']:.3f}, "
              f"+refine {results['methods']['hio-er + fit + refine'][label]['relative_rmse']:.3f}; ms/pattern: HIO/ER "
              f"{1e3 * rec.seconds_phase / n_sub:.0f}, object fit {1e3 * rec.seconds_fit / n_sub:.0f}, refine "
              f"{1e3 * rec.seconds_refine / n_sub:.0f}", flush=True)

    # The direct fit on every test pattern (one batched call per label), scored on all and on the subset.
    fit_row: dict = {}
    for label, k in counts.items():
        t0 = time.perf_counter()
        est, deviance = multistart_fit(manifold, k, direct)
        secs = time.perf_counter() - t0
        raw, rel = _relative(est, truth, spread)
        fit_row[label] = {"rmse": raw, "relative_rmse": rel, "ms_per_pattern": 1e3 * secs / len(est),
                          "median_deviance": float(deviance.median()), **_per_pattern(est, truth, spread)}
        if n_classical:
            raw, rel = _relative(est[sub], truth[sub], spread)
            fit_row.setdefault("subset", {})[label] = {"rmse": raw, "relative_rmse": rel,
                                                       **_per_pattern(est[sub], truth[sub], spread)}
        print(f"  direct fit ({label}): rel. RMSE {rel:.4f}, median pattern error "
              f"{fit_row[label]['median_pattern_error']:.4f}, {fit_row[label]['ms_per_pattern']:.1f} ms/pattern", flush=True)
    results["methods"]["direct fit"] = fit_row
    std = cramer_rao_bound(manifold, points)  # float64: the floor itself, not a timed method
    crb_row: dict = {"clean": _zero_scores(), "noisy": _crb_scores(std, spread)}
    if n_classical:
        crb_row["subset"] = {"clean": _zero_scores(), "noisy": _crb_scores(std[sub], spread)}
    results["methods"]["cramer-rao bound"] = crb_row
    print(f"  Cramer-Rao bound (noisy): rel. RMSE {crb_row['noisy']['relative_rmse']:.4f}, median pattern error "
          f"{crb_row['noisy']['median_pattern_error']:.4f}", flush=True)

    # The networks on the classical subset too, so every method is compared on the same patterns.
    if n_classical:
        for name in args.runs:
            ckpt = json.loads((work / name / "results.json").read_text())["checkpoint"]
            model = model_from_checkpoint(load_checkpoint(work / name / ckpt))
            results["methods"][name]["subset"] = _network_scores(model, {k: v[sub] for k, v in inputs.items()},
                                                                 truth[sub], spread)
    m = results["methods"]
    summary = {}
    if "value" in m and "second" in m:
        summary["value_over_second_clean"] = m["value"]["clean"]["relative_rmse"] / m["second"]["clean"]["relative_rmse"]
    nets = [k for k in RUNS if k in m]
    if nets:
        # All on the whole test set: the networks and the direct fit both ran on it.
        best = min(nets, key=lambda k: m[k]["noisy"]["relative_rmse"])
        f, b, c = m["direct fit"]["noisy"], m[best]["noisy"], crb_row["noisy"]
        summary.update(
            best_network_noisy=best,
            best_network_over_fit_noisy=b["relative_rmse"] / f["relative_rmse"],
            best_network_over_fit_noisy_median=b["median_pattern_error"] / f["median_pattern_error"],
            best_network_over_crb_noisy=b["relative_rmse"] / c["relative_rmse"],
            fit_over_crb_noisy=f["relative_rmse"] / c["relative_rmse"],
            speedup_over_fit=f["ms_per_pattern"] / b["ms_per_pattern"],
        )
        if n_classical:
            summary["hio_over_best_network_noisy_subset"] = (m["hio-er + fit"]["noisy"]["relative_rmse"]
                                                             / m[best]["subset"]["noisy"]["relative_rmse"])
            summary["speedup_over_hio"] = m["hio-er + fit"]["noisy"]["ms_per_pattern"] / b["ms_per_pattern"]
    results["summary"] = summary
    results["machine"] = machine_info()
    results["date"] = time.strftime("%Y-%m-%d")
    results["command"] = " ".join(["python", *sys.argv])
    write_text_atomic(work / "results.json", json.dumps(results, indent=2) + "\n")
    print(_table(results))
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "results.json", Path(args.save) / "results.json")
    return results


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}{spec}}"


def _table(results: dict) -> str:
    """Every row on the same patterns: the HIO/ER subset when HIO/ER ran, else the whole test set."""
    lines = [f"{'method':24s} {'clean rel.':>10s} {'noisy rel.':>10s} {'clean med.':>10s} {'noisy med.':>10s} "
             f"{'noisy <0.1':>10s} {'ms/pattern':>11s}"]
    for name, s in results["methods"].items():
        c, n = (s["subset"]["clean"], s["subset"]["noisy"]) if "subset" in s else (s["clean"], s["noisy"])
        lines.append(f"{name:24s} {c['relative_rmse']:10.4f} {n['relative_rmse']:10.4f} {c['median_pattern_error']:10.4f} "
                     f"{n['median_pattern_error']:10.4f} {_fmt(n['solved_fraction'], '.2f', 10)} "
                     f"{_fmt(s['noisy']['ms_per_pattern'], '.4g', 11)}")
    lines.append(json.dumps(results["summary"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
