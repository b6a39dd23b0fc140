"""Data-parallel overhead: second-order training on 1 and on 2 processes under torchrun.

Each row trains the same run (cube, ``Objective.second_order()``, tanh MLP ``--hidden``, the
global batch ``--batch``, from one shared jet cache, no validation) with
``python -m torch.distributed.run --standalone --nproc_per_node=P -m manifoldtrain train``
and reads ``results.json``: throughput is ``steps * batch / seconds`` (training seconds: the
trainer's clock, which leaves out evaluation and checkpoints), and ``communication`` gives
rank 0's seconds in the gradient all-reduce per step (waiting for the slower process
included). To separate the two, each process count above one also times the all-reduce
alone (``--all-reduce-repeats`` calls of ``DistributedContext.all_reduce_gradients`` on the
same model's gradients under torchrun, each after a barrier, so that no process waits for
another's compute): the transfer's own cost, the rest of the training figure is waiting.
The processes share the machine's cores: ``--cores`` threads in all, so one
process gets ``--cores`` threads and each of P processes ``--cores / P``. On one machine
that shows the overhead of splitting the batch, not a speed-up; on several machines the
all-reduce time per step is what the extra machines must pay back.

Usage::

    python benchmarks/distributed.py --out benchmarks/results/distributed.json   # about 3 minutes on 2 cores
    python benchmarks/distributed.py --quick                                    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from manifoldtrain.config import DataConfig, ExperimentConfig, save_config
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig
from manifoldtrain.objectives import Objective
from manifoldtrain.training import TrainConfig

def run_config(args, batch: int, cache: Path) -> ExperimentConfig:
    """The benchmark's run: ``Objective.second_order()`` on the cube, from the jet cache in ``cache``."""
    cube = Cube(image_size=9, extent=0.5, sigma=0.08) if args.quick else Cube()
    return ExperimentConfig(
        manifold=cube, data=DataConfig(n_train=args.n_train, n_test=16, seed=0, cache_dir=str(cache)),
        model=MLPConfig(hidden=tuple(args.hidden)), objective=Objective.second_order(),
        train=TrainConfig(epochs=args.epochs, batch_size=batch, learning_rate=1e-3, seed=0, progress=False),
        model_seed=0)


def torchrun(work: Path, processes: int, threads: int, program: list[str]) -> None:
    """Run ``program`` (``-m module ...`` or ``script ...``) on ``processes`` processes of ``threads``
    threads each under ``python -m torch.distributed.run --standalone``, in ``work``; stop on failure."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *program]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), capture_output=True,
                          text=True, cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")


def train(work: Path, processes: int, threads: int, batch: int, repeat: int, args) -> dict:
    """One run under torchrun (a new folder); returns its results.json."""
    name = f"p{processes}_b{batch}_r{repeat}"
    config = work / f"{name}.toml"
    save_config(run_config(args, batch, work / "cache"), config)
    out = work / name
    t0 = time.perf_counter()
    torchrun(work, processes, threads, ["-m", "manifoldtrain", "train", "--config", str(config), "--out", str(out),
                                        "--threads", str(threads)])
    results = json.loads((out / "results.json").read_text())
    results["launcher_seconds"] = time.perf_counter() - t0
    return results


def all_reduce_alone(work: Path, processes: int, threads: int, args) -> dict:
    """The gradient all-reduce with nothing to wait for, timed under torchrun by this script's worker."""
    out = work / f"all_reduce_p{processes}.json"
    torchrun(work, processes, threads, [
        str(Path(__file__).resolve()), "--all-reduce-worker", str(out), "--threads", str(threads),
        "--all-reduce-repeats", str(args.all_reduce_repeats), "--hidden", *map(str, args.hidden),
        *(["--quick"] if args.quick else [])])
    return json.loads(out.read_text())


def all_reduce_worker(out: str, threads: int, repeats: int, args) -> int:
    """One process of :func:`all_reduce_alone`: the run's model with gradients of ones, and
    ``repeats`` calls of ``all_reduce_gradients`` (with the losses' small ``extra``, as in
    training), each after a barrier; rank 0 writes the times (ms) to ``out``."""
    import torch

    from manifoldtrain.distributed import DistributedContext
    from manifoldtrain.nn import build_model

    torch.set_num_threads(threads)
    ctx = DistributedContext.from_environment("cpu")
    cube = run_config(args, 1, Path(out).parent).manifold
    points = cube.sample(2, generator=torch.Generator().manual_seed(0))
    inputs, targets = cube.jets(points, 0)
    model = build_model(MLPConfig(hidden=tuple(args.hidden)), inputs.value, targets.value, seed=0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    times = []
    for k in range(repeats + 2):  # two warm-up calls
        for p in parameters:
            p.grad = torch.ones_like(p)
        ctx.barrier()
        started = time.perf_counter()
        ctx.all_reduce_gradients(model, 1.0 / ctx.world_size, torch.zeros(3, dtype=torch.float64))
        if k >= 2:
            times.append(1e3 * (time.perf_counter() - started))
    slowest = ctx.all_gather_object(times)  # a call costs what its slowest process paid
    if ctx.is_main:
        per_call = sorted(max(ts) for ts in zip(*slowest))
        numel = sum(p.numel() for p in parameters)
        write_text_atomic(out, json.dumps({
            "processes": ctx.world_size, "threads_per_process": threads, "calls": repeats,
            "parameters": numel, "megabytes": numel * 4 / 1e6,
            "median_ms": per_call[len(per_call) // 2], "mean_ms": sum(per_call) / len(per_call),
            "min_ms": per_call[0], "max_ms": per_call[-1]}) + "\n")
    ctx.shutdown()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="global batch sizes")
    parser.add_argument("--cores", type=int, default=2, help="threads in all, shared among the processes")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    parser.add_argument("--work", default=None, help="folder for the runs and the cache (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny cube, network and data")
    parser.add_argument("--all-reduce-repeats", type=int, default=50, metavar="N",
                        help="calls of the all-reduce alone per process count (default 50)")
    parser.add_argument("--all-reduce-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.all_reduce_worker:
        return all_reduce_worker(args.all_reduce_worker, args.threads, args.all_reduce_repeats, args)
    for name in ("processes", "batches", "hidden"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name}: expected positive integers, got {getattr(args, name)}")
    if args.cores < max(args.processes):
        parser.error(f"--cores ({args.cores}) must be at least the largest --processes ({max(args.processes)})")
    if args.all_reduce_repeats < 1:
        parser.error(f"--all-reduce-repeats: expected a positive integer, got {args.all_reduce_repeats}")
    if args.quick:
        args.n_train, args.epochs, args.hidden, args.batches, args.repeats = 32, 1, [8], [8], 1
        args.all_reduce_repeats = 3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for batch in args.batches:
            for p in args.processes:
                runs = [train(work, p, args.cores // p, batch, k, args) for k in range(args.repeats)]
                best = min(runs, key=lambda r: r["seconds"])
                comm = best["communication"]
                rows.append({
                    "processes": p, "threads_per_process": args.cores // p, "batch": batch, "steps": best["steps"],
                    "seconds": best["seconds"], "samples_per_s": best["steps"] * batch / best["seconds"],
                    "all_reduce_ms_per_step": (1e3 * comm["all_reduce_seconds"] / comm["steps"]
                                               if comm["steps"] else 0.0),
                    "step_ms": 1e3 * best["seconds"] / best["steps"], "world_size": best["world_size"],
                    "test_rmse": best["test"]["rmse"],
                })
                r = rows[-1]
                print(f"batch {batch}, {p} process(es) x {r['threads_per_process']} threads: "
                      f"{r['samples_per_s']:.0f} samples/s, step {r['step_ms']:.1f} ms, all-reduce "
                      f"{r['all_reduce_ms_per_step']:.2f} ms/step", flush=True)
        alone = [all_reduce_alone(work, p, args.cores // p, args) for p in args.processes if p > 1]
        for a in alone:
            print(f"all-reduce alone, {a['processes']} processes, {a['megabytes']:.1f} MB of gradients: median "
                  f"{a['median_ms']:.2f} ms (min {a['min_ms']:.2f}, max {a['max_ms']:.2f}) over {a['calls']} calls",
                  flush=True)
    print("\n| global batch | processes x threads | samples/s | step ms | all-reduce ms/step | share of step |"
          "\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['processes']} x {r['threads_per_process']} | {r['samples_per_s']:.0f} | "
              f"{r['step_ms']:.1f} | {r['all_reduce_ms_per_step']:.2f} | "
              f"{r['all_reduce_ms_per_step'] / r['step_ms']:.1%} |")
    if args.out:
        meta = {"command": command_line(argv, __file__),
                "n_train": args.n_train, "epochs": args.epochs, "hidden": list(args.hidden), "cores": args.cores,
                **machine_info()}
        write_text_atomic(args.out, json.dumps({"meta": meta, "rows": rows, "all_reduce_alone": alone}, indent=2)
                          + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
