"""Robustness: value vs invariance vs oracle training, at equal data, architecture and budget.

The full version of ``manifoldtrain robustness`` (:func:`manifoldtrain.robustness.run_suite`):
one cube data set, the same tanh MLP at each width (same initial weights per width), the same
wall-clock budget per run, and for each width

* ``value``: values only (no robustness term);
* ``second``: second-order derivative training alone (what the oracle runs build on);
* ``invariance-noise`` and ``invariance-jacobian`` over a sweep of strengths: the conventional
  baseline (noise augmentation with the clean target; the Jacobian penalty of Hoffman et al.
  2019), whose sweep traces the accuracy/robustness trade-off;
* ``oracle-random`` and ``oracle-hessian``: second-order training plus the oracle term along
  random perturbations, or along the top direction of the error operator.

Each network is scored on the same test samples: clean RMSE, worst-case amplification
(median ||E||_2) with its invariance and sensitivity parts, noisy RMSE against the exact oracle,
and adversarial error against the exact oracle at several L2 budgets. The paper's claim: the
oracle-trained networks at least 2x more robust (amplification, adversarial error) and 5x more
accurate than the best invariance-trained network, improving with width.

Usage::

    python benchmarks/robustness.py --work robustness_runs --save benchmarks/results/robustness   # the published table, ~50 min

The defaults are the settings of the table in ``benchmarks/README.md`` and ``docs/robustness.rst``
(widths 128 and 256, 90 s a run on one thread, invariance at 0.01-0.3, oracle at 0.03-1). The
equal-data, trained-to-convergence comparison is ``robustness_converged.py``.
    python benchmarks/robustness.py --quick --work /tmp/rq                                           # smoke run (~1 min)

``--work`` keeps every run's folder (checkpoints): a stopped benchmark resumes where it
stopped. ``--save`` copies results.json, tradeoff.png and worst_case.png there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from manifoldtrain.robustness.suite import OBJECTIVES, SuiteConfig, run_suite

FULL = dict(
    n_train=1000, n_test=200, widths=(128, 256), seconds_per_run=90.0,
    objectives=("value", "second", "invariance-noise", "invariance-jacobian", "oracle-random", "oracle-hessian"),
    invariance_strengths=(0.01, 0.03, 0.1, 0.3), oracle_strengths=(0.03, 0.3, 1.0),
    eval_samples=100, attack_samples=30,
)
QUICK = dict(
    n_train=64, n_test=8, widths=(16,), depth=1, seconds_per_run=1.0,
    objectives=("value", "invariance-noise", "invariance-jacobian", "oracle-random", "oracle-hessian"),
    invariance_strengths=(0.03,), oracle_strengths=(0.03,), noise_levels=(0.01,), budgets=(0.3,),
    eval_samples=4, attack_samples=2, attack_steps=1,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--work", default="robustness_runs", help="folder of the runs (resumable)")
    ap.add_argument("--save", default=None, help="copy results.json and the figures to this folder")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run")
    ap.add_argument("--seconds", type=float, default=None, help="training seconds per run")
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=None)
    ap.add_argument("--invariance-strengths", type=float, nargs="+", default=None)
    ap.add_argument("--oracle-strengths", type=float, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the published table)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    for key, value in (("seconds_per_run", args.seconds), ("widths", args.widths), ("objectives", args.objectives),
                       ("invariance_strengths", args.invariance_strengths), ("oracle_strengths", args.oracle_strengths)):
        if value is not None:
            settings[key] = tuple(value) if isinstance(value, list) else value
    try:
        config = SuiteConfig(progress=False, **settings)
    except (TypeError, ValueError) as err:
        ap.error(str(err))
    results = run_suite(args.work, config)
    if args.save:
        save = Path(args.save)
        save.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "tradeoff.png", "worst_case.png"):
            shutil.copyfile(Path(args.work) / name, save / name)
        print(f"copied results and figures to {save}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
