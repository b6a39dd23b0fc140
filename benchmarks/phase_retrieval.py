"""Phase retrieval: networks (value, second-order, oracle-robust) against HIO/ER + fit.

One :class:`~manifoldtrain.manifolds.PhaseRetrieval` data set (order-2 jets), the same tanh
MLP and initial weights, the same wall-clock budget per run, trained three ways:

* ``value``: parameters from the measurement, values only;
* ``first``: plus first derivatives along the manifold;
* ``second``: plus first and second derivatives;
* ``oracle-hessian``: second-order training plus the robust oracle term along the worst
  direction of the error operator (:mod:`manifoldtrain.robustness`).

and the classical pipeline on the very same test inputs (:mod:`manifoldtrain.baselines`):

* ``hio-er + fit``: Fienup's HIO/ER (1000 iterations, 4 random starts, support = the object
  grid), then a least-squares fit of the parametric object modulo global phase, translation
  and twin (16 starts);
* ``hio-er + fit + refine``: then 30 Levenberg-Marquardt iterations of the parameters against
  the measurement itself (not Fienup's method: the careful user's last step).

Each is scored on clean test measurements and on Poisson-noisy ones (the manifold's
``photons``): parameter RMSE, both raw and relative (each parameter's RMSE over its standard
deviation in the test set, averaged: 1 = predicting the mean), and seconds per reconstruction
(networks: one batched forward pass over the test set, per pattern; classical: the batch's
wall-clock per pattern). Goals (issue 11): derivative training 5x more accurate than value
training at equal budget, more accurate than HIO/ER on noisy data, 100x faster per
reconstruction.

Usage::

    python benchmarks/phase_retrieval.py --work pr_runs --save benchmarks/results/phase_retrieval  # ~25 min
    python benchmarks/phase_retrieval.py --quick --work /tmp/prq                                      # smoke run

``--work`` keeps every run's folder: a stopped benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from manifoldtrain.baselines import FitSettings, HIOSettings, reconstruct
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--work", default="pr_runs", help="folder of the runs (resumable)")
    ap.add_argument("--save", default=None, help="copy results.json there")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run")
    ap.add_argument("--seconds", type=float, default=300.0, help="training seconds per run (default 300)")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-classical", type=int, default=100, help="test patterns given to HIO/ER (default 100)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    manifold = PhaseRetrieval()
    hidden, n_train, n_test, n_classical, seconds = (256, 256, 256), args.n_train, args.n_test, args.n_classical, args.seconds
    hio, fit, refine = HIOSettings(), FitSettings(), 30
    if args.quick:
        hidden, n_train, n_test, n_classical, seconds = (16,), 32, 8, 2, 1.0
        hio, fit, refine = HIOSettings(iterations=20, starts=1), FitSettings(starts=2, iterations=3), 2
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
                              progress=False),
            model_seed=0,
        )

    print(f"phase retrieval benchmark: {n_train} training / {n_test} test samples, MLP {list(hidden)}, "
          f"{seconds:g} s per run -> {work}", flush=True)
    train, test = make_data(experiment("second"), progress=False)
    truth = test.targets.value
    spread = truth.double().std(dim=0)  # each parameter's spread over the test set
    # The test samples' points are the targets themselves (target_kind="parameters").
    points = truth.double()
    inputs = {
        "clean": test.inputs.value,
        "noisy": manifold.measure(points, torch.Generator().manual_seed(1)).to(test.inputs.value.dtype),
    }
    results: dict = {"methods": {}, "config": {
        "manifold": repr(manifold), "n_train": n_train, "n_test": n_test, "n_classical": n_classical, "hidden": list(hidden),
        "seconds_per_run": seconds, "hio": repr(hio), "fit": repr(fit), "refine": refine}}
    for name in args.runs:
        res = run_experiment(experiment(name), work / name, data=(train, test), progress=False)
        model = model_from_checkpoint(load_checkpoint(work / name / res["checkpoint"]))
        scores = _network_scores(model, inputs, truth, spread)
        scores.update(epochs=res["epochs"], seconds=res["seconds"])
        results["methods"][name] = scores
        print(f"  {name:16s} clean rel. RMSE {scores['clean']['relative_rmse']:.3f}  noisy {scores['noisy']['relative_rmse']:.3f}"
              f"  ({res['epochs']} epochs, {scores['clean']['ms_per_pattern']:.3f} ms/pattern)", flush=True)

    sub = slice(0, n_classical)
    for label, x in inputs.items():
        rec = reconstruct(manifold, x[sub].double(), hio, fit, refine=refine)
        for method, est, secs in (("hio-er + fit", rec.fitted, rec.seconds_phase + rec.seconds_fit),
                                  ("hio-er + fit + refine", rec.params, rec.seconds)):
            raw, rel = _relative(est, truth[sub], spread)
            results["methods"].setdefault(method, {})[label] = {
                "rmse": raw, "relative_rmse": rel, "ms_per_pattern": 1e3 * secs / len(est),
                "median_fourier_error": float(rec.fourier_error.median()), **_per_pattern(est, truth[sub], spread)}
        print(f"  classical ({label}): HIO/ER+fit rel. RMSE {results['methods']['hio-er + fit'][label]['relative_rmse']:.3f}, "
              f"+refine {results['methods']['hio-er + fit + refine'][label]['relative_rmse']:.3f}, "
              f"{1e3 * rec.seconds / len(rec.params):.0f} ms/pattern", flush=True)
    # The networks on the classical subset too, so every method is compared on the same patterns.
    for name in args.runs:
        ckpt = json.loads((work / name / "results.json").read_text())["checkpoint"]
        model = model_from_checkpoint(load_checkpoint(work / name / ckpt))
        results["methods"][name]["subset"] = _network_scores(model, {k: v[sub] for k, v in inputs.items()}, truth[sub],
                                                             spread)
    m = results["methods"]
    summary = {}
    if "value" in m and "second" in m:
        summary["value_over_second_clean"] = m["value"]["clean"]["relative_rmse"] / m["second"]["clean"]["relative_rmse"]
    best_net = min((k for k in RUNS if k in m), key=lambda k: m[k]["subset"]["noisy"]["relative_rmse"], default=None)
    if best_net:
        summary["best_network_noisy"] = best_net
        summary["hio_over_best_network_noisy_subset"] = (m["hio-er + fit"]["noisy"]["relative_rmse"]
                                                         / m[best_net]["subset"]["noisy"]["relative_rmse"])
        summary["speedup_over_hio"] = m["hio-er + fit"]["clean"]["ms_per_pattern"] / m[best_net]["clean"]["ms_per_pattern"]
    results["summary"] = summary
    results["machine"] = machine_info()
    results["command"] = " ".join(["python", *sys.argv])
    write_text_atomic(work / "results.json", json.dumps(results, indent=2) + "\n")
    print(_table(results))
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "results.json", Path(args.save) / "results.json")
    return results


def _table(results: dict) -> str:
    lines = [f"{'method':24s} {'clean rel.':>10s} {'noisy rel.':>10s} {'clean med.':>10s} {'noisy med.':>10s} "
             f"{'noisy <0.1':>10s} {'ms/pattern':>11s}"]
    for name, s in results["methods"].items():
        # networks: on the classical subset, so every row scores the same patterns
        c, n = (s["subset"]["clean"], s["subset"]["noisy"]) if "subset" in s else (s["clean"], s["noisy"])
        lines.append(f"{name:24s} {c['relative_rmse']:10.3f} {n['relative_rmse']:10.3f} {c['median_pattern_error']:10.3f} "
                     f"{n['median_pattern_error']:10.3f} {n['solved_fraction']:10.2f} {s['clean']['ms_per_pattern']:11.3f}")
    lines.append(json.dumps(results["summary"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
