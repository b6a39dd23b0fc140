"""Robustness along training: does a later epoch than the chosen one give a more robust network?

``robustness_converged.py`` keeps every network at its lowest validation RMSE. For adversarial
training at L2 0.3 (the most robust invariance network) that is around epoch 70-100 of 1000, so
a reviewer may ask whether the rule handicaps the baseline: would a later epoch be more robust?
This script retrains one run of ``robustness_converged.py`` exactly (the same data, split,
initial weights, objective, epoch budget and schedule: its ``run_setup``) and records,
every ``--every`` epochs, the clean test RMSE, the validation RMSE and the worst-case
amplification (median ||E||_2, with its invariance and sensitivity parts) on the first
``eval_samples`` (100) test samples, then writes them to ``--out`` (JSON) with the epoch the
protocol chooses.

Usage::

    python benchmarks/robustness_curve.py --seed 0 --width 128 --objective invariance-adversarial \
        --strength 0.3 --out benchmarks/results/robustness_curve/s0-w128-invariance-adversarial-0.3.json
    python benchmarks/robustness_curve.py --quick --out /tmp/curve.json     # smoke run (seconds)

One thread, about 20 minutes for the adversarial run of width 128 on this 2-core machine (shared).
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

import attrs
import torch

from manifoldtrain.evaluation import JetRMSE
from manifoldtrain.nn import build_model
from manifoldtrain.records import command_line, machine_info, write_json
from manifoldtrain.robustness import Robustness
from manifoldtrain.training import Trainer

HERE = Path(__file__).resolve().parent


def curve(settings: dict, seed: int, width: int, name: str, strength: float | None, every: int,
          run_setup) -> dict:
    """Train the run of ``robustness_converged.py`` called ``(seed, width, name, strength)``
    (built by its ``run_setup``) with the robustness figures recorded every ``every`` epochs;
    return the records."""
    experiment, train, test = run_setup(settings, seed, width, name, strength, eval_every=every)
    experiment = attrs.evolve(experiment, train=attrs.evolve(experiment.train, progress=False))
    inputs, targets = train.inputs.value, train.targets.value
    model = build_model(experiment.model, inputs, targets, seed=experiment.model_seed).to(inputs.dtype)
    trainer = Trainer(model, experiment.objective, train, test, experiment.train,
                      metrics=(JetRMSE(), Robustness(samples=settings["eval_samples"])))
    t0 = time.perf_counter()
    history = trainer.fit()
    keep = ("rmse", "amplification", "invariance_part", "sensitivity_part")
    rows = [{"epoch": r["epoch"], **{f"test_{k}": r["test"][k] for k in keep},
             "validation_rmse": (r.get("validation") or {}).get("rmse")}
            for r in history.records if r.get("test") and "amplification" in r["test"]]
    return {"seed": seed, "width": width, "objective": name, "strength": strength, "every": every,
            "best_epoch": trainer.best["epoch"] if trainer.best is not None else None,
            "epochs": experiment.train.epochs, "seconds": time.perf_counter() - t0, "rows": rows,
            "settings": {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()},
            "machine": machine_info()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--objective", default="invariance-adversarial")
    ap.add_argument("--strength", type=float, default=0.3, help="the run's strength (none for value or second)")
    ap.add_argument("--every", type=int, default=20, help="record every this many epochs (default 20)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (robustness_converged.py's --quick data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="the records (JSON); an existing file is not replaced")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mod = runpy.run_path(str(HERE / "robustness_converged.py"))
    runs = mod["RUNS"]
    if args.objective not in runs:
        ap.error(f"--objective: expected one of {sorted(runs)}, got {args.objective!r}")
    strength = None if runs[args.objective][2] is None else args.strength
    if args.every < 1:
        ap.error(f"--every: expected an int >= 1, got {args.every}")
    out = Path(args.out)
    if out.exists():
        ap.error(f"--out: {out} exists; this script does not replace a file (remove it or name another)")
    settings = dict(mod["QUICK"] if args.quick else mod["FULL"])
    result = curve(settings, args.seed, args.width, args.objective, strength, 1 if args.quick else args.every,
                   mod["run_setup"])
    result["command"] = command_line(argv, __file__)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    for r in result["rows"]:
        print(f"epoch {r['epoch']:5d}  test RMSE {r['test_rmse']:.3e}  validation RMSE {r['validation_rmse']:.3e}  "
              f"amplification {r['test_amplification']:.3f}")
    print(f"chosen (lowest validation RMSE): epoch {result['best_epoch']}; wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
