"""Finishing a converged second-order network: full-batch Rprop, L-BFGS, and a staged finish.

``accuracy.py`` trains every objective with AdamW on mini-batches under a cosine schedule. The
paper's author finished differently: train with every derivative, then drop the highest order
step by step, ending on values, with full-batch Rprop until the cost stalls. This script
measures, per seed, on ``accuracy.py``'s data (``n_train + n_test`` cube poses drawn with seed
``1000 + S``, split by ``S``) and network (tanh MLP, 3x256 by default, initial weights by ``S``):

* ``value``: values only, ``--epochs`` VALUE epochs (its final test RMSE, and the best along
  the run on the test set, the view that favours value training, as in ``accuracy.py``);
* ``second``: second-order training, SECOND epochs: the network every finish starts from;
* ``second+rprop``: then full-batch Rprop on the same second-order objective;
* ``second+lbfgs``: then full-batch L-BFGS (strong Wolfe line search) on it;
* ``staged``: then full-batch Rprop on the first-order objective, then on values alone (the
  highest order dropped step by step, ending on values).

Every full-batch phase runs until its training loss has not fallen by ``--stall`` (relative)
over ``--window`` iterations, or ``--iterations`` at most. Reported: test RMSE of each, the
ratio value / each (paired per seed), iterations and seconds of each phase.

Each (seed, run) writes a part file under ``--work`` (atomically) and is not run again; the
second-order network is kept as ``s{S}_second.pt`` (loaded with ``weights_only=True``) for the
finishes, and its training checkpoints, so a stopped sweep continues.

Usage::

    python benchmarks/accuracy_finish.py --work finish --n-train 1000 --seeds 0 1 2
    python benchmarks/accuracy_finish.py --work finish --summarize --out S.json
    python benchmarks/accuracy_finish.py --quick --work /tmp/fq            # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.records import command_line, machine_info, write_json
from manifoldtrain.training import Trainer, TrainConfig

RUNS = ("value", "second", "second+rprop", "second+lbfgs", "staged")


def data_for(seed: int, n_train: int, n_test: int, cube: Cube):
    data = generate_jets(cube, n_train + n_test, seed=1000 + seed, progress=False)
    return data.split(n_test, seed=seed)


def train_adam(model, objective, train, test, epochs, seed, folder=None) -> tuple[Trainer, list]:
    cfg = TrainConfig(epochs=epochs, batch_size=64, learning_rate=1e-3, seed=seed, progress=False,
                      eval_every=max(1, epochs // 20), eval_overhead=None,
                      checkpoint_every=max(1, epochs // 40) if folder else None)
    trainer = Trainer(model, objective, train, test, cfg, checkpoint_dir=folder)
    history = trainer.fit()
    return trainer, [r["test"]["rmse"] for r in history.records if "test" in r]


def full_batch(model, objective, train, method: str, *, iterations: int, window: int, stall: float,
               seed: int, lbfgs_lr: float = 0.1) -> dict:
    """Full-batch ``method`` ("rprop" or "lbfgs") on ``objective`` until the loss stalls."""
    trainer = Trainer(model, objective, train, None, TrainConfig(epochs=1, seed=seed, progress=False))
    x, y = trainer.batch(torch.arange(len(trainer.train)))
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn():
        losses = objective.losses(model, x, y, trainer.scales, trainer.direction_generator, scaled=True,
                                  normalisers=trainer.normalisers)
        return sum(losses.values())

    if method == "rprop":
        opt = torch.optim.Rprop(params, lr=1e-5, etas=(0.5, 1.2), step_sizes=(1e-9, 1e-3))
    else:
        # One iteration a step, our own stall test. lr scales the line search's first trial step:
        # at 1 (torch's default) the first trial on the converged cube network is far too long and
        # the strong-Wolfe search returned t = 0 at every iteration (50 of them, float32 and float64).
        opt = torch.optim.LBFGS(params, lr=lbfgs_lr, max_iter=1, history_size=50, line_search_fn="strong_wolfe",
                                tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    curve: list[float] = []  # the loss at the weights before each step
    best, best_state = float("inf"), None
    for _ in range(iterations + 1):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if len(curve) == iterations:  # the last weights: scored, not stepped from
            with torch.no_grad():
                loss = float(loss_fn())
        else:
            loss = float(opt.step(closure).detach())
        if loss != loss:  # NaN: stop, keep the best weights
            break
        curve.append(loss)
        if loss < best:
            best, best_state = loss, state
        if len(curve) > window and min(curve[-window:]) > min(curve[:-window]) * (1 - stall):
            break
    model.load_state_dict(best_state)
    start = curve[0]
    return {"method": method, "objective": list(objective.names), **({"lr": lbfgs_lr} if method == "lbfgs" else {}), "iterations": len(curve) - 1, "curve": curve[:: max(1, len(curve) // 50)],
            "loss_start": start, "loss_end": best, "seconds": time.perf_counter() - t0}


def part_path(work: Path, seed: int, run: str) -> Path:
    return work / f"s{seed}_{run.replace('+', '_')}.json"


def run_seed(work: Path, args, seed: int, cube: Cube) -> None:
    todo = [r for r in RUNS if not part_path(work, seed, r).exists()]
    if not todo:
        return
    torch.manual_seed(seed)
    train, test = data_for(seed, args.n_train, args.n_test, cube)
    hidden = tuple(args.hidden)

    def fresh():
        return build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed)

    def write(run, model, extra):
        final = evaluate(model, test)
        train_rmse = evaluate(model, train.subset(slice(0, args.n_test)), order=0).rmse
        part = {"seed": seed, "run": run, "test_rmse": final.rmse, "train_rmse": train_rmse, "test_rmse_d1": final.rmse_d1,
                "test_rmse_d2": final.rmse_d2, "n_train": args.n_train, "n_test": args.n_test, "hidden": list(hidden),
                "epochs": list(args.epochs), **extra, "machine": machine_info()}
        write_json(part_path(work, seed, run), part)
        print(f"seed {seed} {run:<13} test RMSE {final.rmse:.3e}  {json.dumps({k: v for k, v in extra.items() if k != 'curve'})}",
              flush=True)

    if "value" in todo:
        model = fresh()
        t0 = time.perf_counter()
        _, curve = train_adam(model, Objective.value(), train, test, args.epochs[0], seed,
                              work / f"s{seed}_value.checkpoints")
        write("value", model, {"best_test_rmse": min(curve), "seconds": time.perf_counter() - t0, "curve": curve})
    second_file = work / f"s{seed}_second.pt"
    if not second_file.exists():
        model = fresh()
        t0 = time.perf_counter()
        _, curve = train_adam(model, Objective.second_order(), train, test, args.epochs[1], seed,
                              work / f"s{seed}_second.checkpoints")
        torch.save(model.state_dict(), second_file.with_suffix(".tmp"))
        second_file.with_suffix(".tmp").replace(second_file)
        if not part_path(work, seed, "second").exists():
            write("second", model, {"seconds": time.perf_counter() - t0, "curve": curve})
    fb = dict(iterations=args.iterations, window=args.window, stall=args.stall, seed=seed, lbfgs_lr=args.lbfgs_lr)
    for run, phases in (("second+rprop", [(Objective.second_order(), "rprop")]),
                        ("second+lbfgs", [(Objective.second_order(), "lbfgs")]),
                        ("staged", [(Objective.first_order(), "rprop"), (Objective.value(), "rprop")])):
        if run not in todo:
            continue
        model = fresh()
        model.load_state_dict(torch.load(second_file, weights_only=True))
        before = {"start_test_rmse": evaluate(model, test, order=0).rmse,
                  "start_train_rmse": evaluate(model, train.subset(slice(0, args.n_test)), order=0).rmse}
        done = [full_batch(model, objective, train, method, **fb) for objective, method in phases]
        write(run, model, {"phases": done, "seconds": sum(p["seconds"] for p in done), **before})


def summarize(parts: list[dict]) -> dict:
    by = {(p["seed"], p["run"]): p for p in parts}
    seeds = sorted({p["seed"] for p in parts})
    out = {}
    for run in RUNS:
        rm = [by[s, run]["test_rmse"] for s in seeds if (s, run) in by]
        ratios = [by[s, "value"]["test_rmse"] / by[s, run]["test_rmse"] for s in seeds if (s, run) in by and (s, "value") in by]
        if rm:
            out[run] = {"seeds": [s for s in seeds if (s, run) in by], "test_rmse": rm,
                        "test_rmse_mean": statistics.fmean(rm),
                        "value_over": ratios, "value_over_mean": statistics.fmean(ratios) if ratios else None,
                        "value_over_sd": statistics.stdev(ratios) if len(ratios) > 1 else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--work", default="accuracy_finish")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    ap.add_argument("--epochs", type=int, nargs=2, default=[1000, 800], metavar=("VALUE", "SECOND"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=500, help="at most, per full-batch phase")
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--lbfgs-lr", type=float, default=0.1, help="L-BFGS's lr: the scale of its first trial step")
    ap.add_argument("--stall", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cube = Cube()
    if args.quick:
        args.n_train, args.n_test, args.hidden, args.epochs, args.seeds = 24, 8, [8], [2, 2], [0]
        args.iterations, args.window = 4, 2
        cube = Cube(image_size=9)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        for seed in args.seeds:
            run_seed(work, args, seed, cube)
    parts = [json.loads(p.read_text()) for p in sorted(work.glob("s*_*.json"))]
    if not parts:  # nothing to summarise: say so, and leave any --out file as it is
        print(f"accuracy_finish: no parts (s{{seed}}_{{run}}.json) in {work} yet; run without --summarize first",
              file=sys.stderr)
        return 1
    summary = summarize(parts)
    for run, s in summary.items():
        ratio = "" if s["value_over_mean"] is None else (
            f"  value / it {s['value_over_mean']:.2f}" + (f" ± {s['value_over_sd']:.2f}" if s["value_over_sd"] else "")
            + f" (per seed {', '.join(f'{r:.2f}' for r in s['value_over'])})")
        print(f"{run:<13} test RMSE {s['test_rmse_mean']:.3e} over seeds {s['seeds']}{ratio}")
    if args.out:
        write_json(args.out, {"summary": summary, "command": command_line(argv, __file__), "parts": parts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
