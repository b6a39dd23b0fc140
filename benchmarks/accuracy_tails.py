"""Where the errors of ``accuracy.py``'s networks are: one common, larger test set, and the tails.

``accuracy.py`` scores each seed's networks on that seed's own 1000 test poses. Its
value / second-order ratio moves a lot between seeds (six layers at 4000 samples: 16x to
29x). This script asks why, from the networks the runs left: it loads the final network of
every run from the checkpoints of ``accuracy.py --epochs ... --checkpoint-dir DIR``
(``DIR/s{seed}_{objective}/checkpoint.pt``, loaded with ``weights_only=True``) and scores
it

* on its own test set again, which must reproduce the RMSE its results file recorded (a
  check that the data, the network and the checkpoint are the ones of that run);
* on every other seed's test set (the cross matrix: a network that is worse on every test
  set is a worse network; a test set that every network finds hard is a hard draw);
* on one common test set of ``--n-common`` poses drawn with ``--common-seed`` (no run's
  training or test poses: those are drawn with ``1000 + seed``), with the error's tail: the
  share of the squared error in the worst 1% of the poses, the RMSE without them, the median
  per-pose error, and the RMSE in bands of the pose domain: by translation
  ``|t| / translation_radius`` (0-0.8, 0.8-0.95, 0.95-1: 51%, 35% and 14% of the ball's
  volume) and, crossed with those, by rotation angle ``|angle| / max_angle`` (0-0.8, 0.8-1:
  80% and 20% of the poses), from the interior of the pose domain to its outer corner.

The value / second-order ratios are then given per seed on each of them, with mean and
sample standard deviation over the seeds that have both networks.

Usage::

    python benchmarks/accuracy_tails.py \\
        --results benchmarks/results/accuracy_depth6_n4000_parts/d6_n4000_s{1_second,2_value,2_second,3_value,3_second,4_value,4_second}.json \\
                  benchmarks/results/accuracy_depth6_n4000_tails_parts/d6_n4000_s1_value_rerun.json \\
        --checkpoint-dir CK --out benchmarks/results/accuracy_depth6_n4000_tails.json
    python benchmarks/accuracy_tails.py --quick --results q.json --checkpoint-dir QCK   # accuracy.py --quick's

(``CK`` is the ``--checkpoint-dir`` of the ``accuracy.py`` runs; checkpoints are not committed.)
Scoring is forward passes only: about 10 s for eight networks and 5000 poses on one core.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import time
from pathlib import Path

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.records import command_line, machine_info, write_json

HERE = Path(__file__).resolve().parent
BANDS = ((0.0, 0.8), (0.8, 0.95), (0.95, 1.0))  # |t| / translation_radius
ANGLE_BANDS = ((0.0, 0.8), (0.8, 1.0))  # |angle| / max_angle
WORST = 0.01  # the tail: the worst 1% of the poses


def per_pose_sq_error(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 512) -> torch.Tensor:
    """Mean squared error over the outputs of each pose ``[n]`` (float64), model in eval mode."""
    dtype = next(model.parameters()).dtype
    out = []
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch_size):
            pred = model(inputs[i:i + batch_size].to(dtype)).double()
            out.append((pred - targets[i:i + batch_size].double()).pow(2).reshape(pred.shape[0], -1).mean(1))
    return torch.cat(out)


def _band(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x >= lo) & ((x < hi) if hi < 1.0 else (x <= hi + 1e-9))


def tail_figures(err: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor) -> dict:
    """RMSE, its tail and its bands from per-pose squared errors ``err [n]``, ``radius [n]``
    (``|t| / translation_radius``) and ``angle [n]`` (``|angle| / max_angle``)."""
    srt, order = err.sort(descending=True)
    k = max(1, round(WORST * err.numel()))
    worst = order[:k]

    def rmse(sel):
        return {"n": int(sel.sum()), "rmse": float(err[sel].mean().sqrt()) if sel.any() else None}

    bands = {f"t{lo:g}-{hi:g}": rmse(_band(radius, lo, hi)) for lo, hi in BANDS}
    bands.update({f"a{alo:g}-{ahi:g},t{lo:g}-{hi:g}": rmse(_band(angle, alo, ahi) & _band(radius, lo, hi))
                  for alo, ahi in ANGLE_BANDS for lo, hi in BANDS})
    return {"rmse": float(err.mean().sqrt()), "worst_share": float(srt[:k].sum() / srt.sum()),
            "rmse_without_worst": float(srt[k:].mean().sqrt()), "median_pose_rms": float(err.median().sqrt()),
            "bands": bands,  # where the worst 1% lie: the outer shell (|t| >= 0.95 r), large angles (>= 0.8 max)
            "worst_in_outer_shell": float((radius[worst] >= BANDS[-1][0]).double().mean()),
            "worst_at_large_angle": float((angle[worst] >= ANGLE_BANDS[-1][0]).double().mean())}


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def load_network(path: Path, hidden, like_inputs, like_targets, epochs: int) -> torch.nn.Module:
    """The network of a finished run from its checkpoint (``weights_only=True``)."""
    ck = torch.load(path, weights_only=True, map_location="cpu")
    if ck.get("epoch") != epochs:
        raise ValueError(f"{path}: the run stopped at epoch {ck.get('epoch')}, its results file records {epochs}: "
                         "not the finished run")
    model = build_model(MLPConfig(hidden=tuple(hidden)), like_inputs, like_targets)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the checkpoint's network does not fit this data ({str(err).splitlines()[0]}); "
                         "another cube (--quick?) or --hidden") from None
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--results", nargs="+", required=True, metavar="JSON",
                        help="results files of accuracy.py (parts or merged), converged view, one data setting")
    parser.add_argument("--checkpoint-dir", required=True, metavar="DIR",
                        help="the --checkpoint-dir of those runs (DIR/s{seed}_{objective}/checkpoint.pt)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="score these seeds' runs only (default: every run in --results)")
    parser.add_argument("--n-common", type=int, default=5000, help="poses of the common test set (default 5000)")
    parser.add_argument("--common-seed", type=int, default=99, help="draw seed of the common test set (default 99)")
    parser.add_argument("--quick", action="store_true", help="the runs are accuracy.py --quick's (its tiny cube)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="how close the re-scored own test RMSE must be to the recorded one (default 1e-4)")
    parser.add_argument("--out", default=None, help="results JSON (refuses to replace an existing file)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        parser.error(f"--out: {args.out} exists; this script does not replace a file (remove it or name another)")
    if args.n_common < 100:
        parser.error(f"--n-common: expected at least 100 poses (the worst 1% is one pose or more), got {args.n_common}")
    if args.common_seed < 0 or args.common_seed >= 1000:
        parser.error(f"--common-seed: expected 0 <= seed < 1000 (the runs draw with 1000 + seed), got {args.common_seed}")
    if not (0 < args.rtol < 1):
        parser.error(f"--rtol: expected a number in (0, 1), got {args.rtol}")
    folder = Path(args.checkpoint_dir)
    if not folder.is_dir():
        parser.error(f"--checkpoint-dir: {folder} is not a folder")
    acc = runpy.run_path(str(HERE / "accuracy.py"))
    metas, runs = [], []
    for f in args.results:
        part = acc["read_results"](f, parser, "--results")
        if part["meta"].get("view") != "converged":
            parser.error(f"--results: {f} is a {part['meta'].get('view', 'wall-clock')} run; only converged runs "
                         "leave checkpoints")
        metas.append(part["meta"])
        runs += part["runs"]
    acc["check_same_setup"](metas, parser, "--results")
    n_train, n_test, hidden = metas[0]["n_train"], metas[0]["n_test"], metas[0]["hidden"]
    margin = metas[0].get("train_margin", 0.0)  # the test poses are the unwidened ones either way
    if args.seeds is not None:
        missing = sorted(set(args.seeds) - {r["seed"] for r in runs})
        if missing:
            parser.error(f"--seeds: no runs of seeds {missing} in --results")
        runs = [r for r in runs if r["seed"] in args.seeds]
    keys = [(r["seed"], r["objective"]) for r in runs]
    if len(set(keys)) != len(keys):
        parser.error(f"--results: the files repeat runs {sorted({k for k in keys if keys.count(k) > 1})}")
    absent = [f"s{s}_{o}" for s, o in keys if not (folder / f"s{s}_{o}" / "checkpoint.pt").is_file()]
    if absent:
        parser.error(f"--checkpoint-dir: no checkpoint for {', '.join(absent)} (choose --seeds)")

    torch.set_num_threads(args.threads)
    cube = acc["benchmark_cube"](args.quick)
    seeds = sorted({s for s, _ in keys})
    t0 = time.perf_counter()
    own = {s: acc["test_set"](cube, n_train, n_test, s, order=0) for s in seeds}  # values: all an RMSE reads
    common = generate_jets(cube, args.n_common, seed=args.common_seed, order=0, progress=False)
    radius = common.points[:, 3:].norm(dim=1).double() / cube.translation_radius
    angle = common.points[:, :3].norm(dim=1).double() / cube.max_angle
    like = common.inputs.value, common.targets.value
    print(f"cube, {n_train} training / {n_test} test samples, MLP {hidden}; common test set: {args.n_common} "
          f"poses (seed {args.common_seed}); runs {', '.join(f's{s}_{o}' for s, o in keys)}", flush=True)
    scored = []
    order = list(acc["OBJECTIVES"])
    for r in sorted(runs, key=lambda r: (r["seed"], order.index(r["objective"]))):
        s, o = r["seed"], r["objective"]
        try:
            model = load_network(folder / f"s{s}_{o}" / "checkpoint.pt", hidden, *like, r["epochs"])
        except ValueError as err:
            raise SystemExit(f"--checkpoint-dir: {err}") from None
        cross = {str(t): evaluate(model, own[t], order=0).rmse for t in seeds}
        rescored = cross[str(s)]
        if abs(rescored - r["test_rmse"]) > args.rtol * r["test_rmse"]:
            raise SystemExit(f"s{s}_{o}: its own test set scores {rescored:.6e}, its results file records "
                             f"{r['test_rmse']:.6e}: not this run's network or data (cube, --quick, n_train/n_test)")
        err = per_pose_sq_error(model, *like)
        figures = tail_figures(err, radius, angle)
        check = evaluate(model, common, order=0).rmse  # the library's RMSE, the same number
        assert abs(check - figures["rmse"]) <= 1e-5 * check, (check, figures["rmse"])
        scored.append({"seed": s, "objective": o, "own_test_rmse": r["test_rmse"], "rescored_own_test_rmse": rescored,
                       "cross_test_rmse": cross, "common": figures})
        print(f"s{s} {o:<7} own {rescored:.3e} | common {figures['rmse']:.3e}, worst 1% share "
              f"{figures['worst_share']:.2f} (outer shell {figures['worst_in_outer_shell']:.2f}, large angle "
              f"{figures['worst_at_large_angle']:.2f}), without them {figures['rmse_without_worst']:.3e}, median "
              f"{figures['median_pose_rms']:.2e} | bands "
              + ", ".join(f"{b} {v['rmse']:.2e}" for b, v in figures["bands"].items() if "," not in b), flush=True)

    by = {(x["seed"], x["objective"]): x for x in scored}
    print("\ncross: rows networks, columns test sets of seeds " + " ".join(f"{t:>9}" for t in seeds))
    for x in scored:
        print(f"s{x['seed']} {x['objective']:<7}" + " ".join(f"{x['cross_test_rmse'][str(t)]:9.3e}" for t in seeds))
    ratios = {}
    both = [s for s in seeds if (s, "value") in by and (s, "second") in by]
    measures = {"own": lambda x: x["own_test_rmse"], "common": lambda x: x["common"]["rmse"],
                "common_without_worst": lambda x: x["common"]["rmse_without_worst"],
                "common_median": lambda x: x["common"]["median_pose_rms"]}
    measures.update({f"band_{b}": (lambda x, b=b: x["common"]["bands"][b]["rmse"]) for b in scored[0]["common"]["bands"]})
    if both:
        print(f"\nvalue / second order, seeds {both}:")
        for name, get in measures.items():
            if any(get(by[s, o]) is None for s in both for o in ("value", "second")):
                continue  # an empty band
            per = [get(by[s, "value"]) / get(by[s, "second"]) for s in both]
            ratios[name] = {"per_seed": per, "mean": statistics.fmean(per), "sd": _sd(per)}
            sd = ratios[name]["sd"]
            print(f"  {name:<22} {ratios[name]['mean']:6.1f}x" + (f" ± {sd:.1f}" if sd is not None else "")
                  + f"  (per seed {', '.join(f'{v:.1f}' for v in per)})")
    if args.out:
        write_json(args.out, {"meta": {"command": command_line(argv, __file__), "results": list(args.results),
                                       "n_train": n_train, "n_test": n_test, "hidden": hidden,
                                       "train_margin": margin, "n_common": args.n_common, "common_seed": args.common_seed,
                                       "bands": [list(b) for b in BANDS],
                                       "angle_bands": [list(b) for b in ANGLE_BANDS], "worst": WORST,
                                       "seconds": time.perf_counter() - t0, **machine_info()},
                              "ratios": ratios, "networks": scored})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
