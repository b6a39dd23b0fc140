"""Memory while training from jet caches larger than memory, and jets computed on the fly vs cached.

Part 1, peak memory: for each cache size (default 1, 4 and 8 GB of order-2 cube jets in
float32, about 190 KB a sample), generate a sharded cache (``generate_shards``, in
``--workers`` processes; kept in ``--cache-dir`` and reused, or in a temporary folder) and
train on it for ``--steps`` steps in a fresh process (a second-order objective, so every
jet component is read), through :class:`~manifoldtrain.sources.ShardedCacheSource`. The
process's resident memory (VmRSS, and its anonymous and file-backed parts) is sampled every
20 ms; reported are its peak in each phase (opening the cache and building the model; the
loss scales, one exact pass over the whole cache; training) and the process's lifetime peak
(``ru_maxrss``). It must stay flat as the cache grows. With ``--memory-up-to GB`` the same
run also trains from the cache loaded into memory (today's ``source = "memory"``) for the
sizes up to that, for contrast.

Part 2, equal wall-clock: the same network and objective trained for ``--seconds`` each
from (a) a cache of ``--n-cached`` samples (generated beforehand: its generation time is
reported apart), (b) jets computed on the fly at fresh points every epoch
(``OnTheFlySource`` mode ``fresh``, ``--n-cached`` per epoch; jets computed in float64, and
again in float32: ``data.compute_dtype``), (c) a pool of the same ``--n-cached`` points
computed on the fly (float32) every epoch (mode ``pool``); test RMSE (value,
first and second derivatives) on a fixed test set after that time, with steps, epochs and
distinct samples seen.

Usage::

    python benchmarks/data_memory.py --out benchmarks/results/data_memory.json   # 1, 4, 8 GB: ~13 GB of disk
    python benchmarks/data_memory.py --sizes-gb 0.2 --seconds 30                 # a small check
    python benchmarks/data_memory.py --quick                                      # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from manifoldtrain.data import DEFAULT_SHARD_SIZE, JetCache, generate_jets, generate_shards, load_jets
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.sources import OnTheFlySource, ShardedCacheSource
from manifoldtrain.training import Trainer, TrainConfig

MB = 1e6


def cube_for(args) -> Cube:
    return Cube(image_size=args.image_size)


def sample_bytes(cube: Cube, dtype=torch.float32) -> int:
    """Bytes of one order-2 sample on disk (every array)."""
    x, y = cube.jets(cube.sample(1, torch.Generator().manual_seed(0), dtype=torch.float64), 2)
    size = torch.finfo(dtype).bits // 8
    return size * (sum(t[0].numel() for t in (*x.components(), *y.components())) + 6)


def objective() -> Objective:
    # Second order along 2 random pairs: every jet component is read, steps stay cheap.
    return Objective.second_order(directions=2)


# ---------------------------------------------------------------------------- part 1 (child)


class _Sampler:
    """Samples the process's resident memory every ``interval`` s, keeping each phase's peak."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict[str, float]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024 / MB
        return out

    def _record(self) -> None:
        sample = self.now()
        peak = self.peaks.setdefault(self.phase, {})
        for k, v in sample.items():
            peak[k] = max(peak.get(k, 0.0), v)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record()
            time.sleep(self.interval)

    def enter(self, phase: str) -> None:
        self._record()
        self.phase = phase
        self._record()

    def stop(self) -> dict:
        self._record()
        self._stop.set()
        self._thread.join()
        return self.peaks


class _Stop(Exception):
    pass


def child(spec: dict) -> dict:
    """Train ``spec["steps"]`` steps from the cache at ``spec["path"]``, measuring memory."""
    import resource

    torch.set_num_threads(spec["threads"])
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not ours to time
    sampler = _Sampler()
    sampler.enter("open")
    limit = spec["steps"]

    class Counted(Trainer):
        def step(self, batch, **kw):
            if self.steps >= limit:
                raise _Stop
            return super().step(batch, **kw)

    if spec["source"] == "shards":
        train = ShardedCacheSource(spec["path"])
        x, y = train.batch(torch.arange(min(len(train), 2048)), 0, 0)
    else:
        train = load_jets(spec["path"])
        x, y = train.inputs, train.targets
    model = build_model(MLPConfig(hidden=tuple(spec["hidden"])), x.value, y.value, seed=0)
    del x, y
    sampler.enter("statistics")
    t0 = time.perf_counter()
    config = TrainConfig(epochs=10**6, batch_size=spec["batch_size"], learning_rate=1e-3, eval_every=0,
                         checkpoint_every=10**6, progress=False)
    trainer = Counted(model, objective(), train, None, config)
    statistics_seconds = time.perf_counter() - t0
    sampler.enter("training")
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except _Stop:
        pass
    train_seconds = time.perf_counter() - t0
    peaks = sampler.stop()
    return {
        "source": spec["source"],
        "steps": trainer.steps,
        "statistics_seconds": statistics_seconds,
        "train_seconds": train_seconds,
        "samples_per_s": trainer.steps * spec["batch_size"] / train_seconds,
        "peak_rss_mb": {phase: round(p.get("VmRSS", 0.0), 1) for phase, p in peaks.items()},
        "peak_rss_anon_mb": {phase: round(p.get("RssAnon", 0.0), 1) for phase, p in peaks.items()},
        "peak_rss_file_mb": {phase: round(p.get("RssFile", 0.0), 1) for phase, p in peaks.items()},
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1),
    }


def run_child(spec: dict, in_process: bool = False) -> dict:
    """:func:`child` in a fresh Python process (so that its peak memory is its own), or in
    this one (``in_process``: the smoke run; the lifetime peak is then this process's)."""
    if in_process:
        return child(spec)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=spec.get("timeout", 3600))
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- part 1 (parent)


def make_cache(cube: Cube, n: int, folder: Path, args, seed: int = 0) -> tuple[Path, float]:
    path = folder / f"cube{args.image_size}-n{n}-seed{seed}"
    t0 = time.perf_counter()
    generate_shards(cube, n, path, seed=seed, order=2, dtype=torch.float32, shard_size=args.shard_size,
                    workers=args.workers, progress=not args.quick)
    return path, time.perf_counter() - t0


def memory_rows(args, folder: Path) -> list[dict]:
    cube = cube_for(args)
    per_sample = sample_bytes(cube)
    rows = []
    for gb in args.sizes_gb:
        n = max(2 * args.batch_size, math.ceil(gb * 1e9 / per_sample))
        path, seconds = make_cache(cube, n, folder, args)
        size = sum(f.stat().st_size for f in path.rglob("*.npy"))
        sources = ["shards"] + (["memory"] if args.memory_up_to is not None and gb <= args.memory_up_to else [])
        for source in sources:
            spec = {"path": str(path), "source": source, "steps": args.steps, "batch_size": args.batch_size,
                    "hidden": list(args.hidden), "threads": args.threads}
            result = run_child(spec, in_process=args.quick)
            rows.append({"size_gb": gb, "n": n, "cache_mb": round(size / MB, 1),
                         "n_shards": JetCache(path).n_shards, "generation_seconds": round(seconds, 2), **result})
            print_memory_row(rows[-1])
        if not args.keep_caches:
            shutil.rmtree(path, ignore_errors=True)
    return rows


def print_memory_row(r: dict) -> None:
    p = r["peak_rss_mb"]
    print(f"{r['size_gb']:>7g} GB {r['source']:>6}: cache {r['cache_mb']:9.1f} MB in {r['n_shards']:3d} shards | "
          f"peak RSS MB: open {p.get('open', 0):7.1f}, statistics {p.get('statistics', 0):7.1f}, training "
          f"{p.get('training', 0):7.1f}, lifetime {r['max_rss_mb']:7.1f} | statistics "
          f"{r['statistics_seconds']:6.1f} s, {r['samples_per_s']:7.1f} samples/s", flush=True)


# ---------------------------------------------------------------------------- part 2


def equal_time_rows(args, folder: Path) -> list[dict]:
    cube = cube_for(args)
    torch.set_num_threads(args.threads)
    test = generate_jets(cube, args.n_test, seed=10**6, order=2, progress=False)
    path, gen_seconds = make_cache(cube, args.n_cached, folder, args, seed=0)
    variants = [
        ("cached", lambda: ShardedCacheSource(path), gen_seconds),
        ("on-the-fly fresh", lambda: OnTheFlySource(cube, args.n_cached, mode="fresh", seed=0), 0.0),
        ("on-the-fly fresh f32", lambda: OnTheFlySource(cube, args.n_cached, mode="fresh", seed=0,
                                                        compute_dtype=torch.float32), 0.0),
        ("on-the-fly pool f32", lambda: OnTheFlySource(cube, args.n_cached, mode="pool", seed=0,
                                                       compute_dtype=torch.float32), 0.0),
    ]
    _warm_up(cube, args)
    rows = []
    for name, make, before in variants:
        source = make()
        x, y = source.batch(torch.arange(min(len(source), 2048)), 0, 0)
        model = build_model(MLPConfig(hidden=tuple(args.hidden)), x.value, y.value, seed=0)
        config = TrainConfig(epochs=10**6, time_budget=args.seconds, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, eval_every=0, progress=False)
        trainer = Trainer(model, objective(), source, test, config)
        t0 = time.perf_counter()
        history = trainer.fit()
        wall = time.perf_counter() - t0
        test_metrics = history.last_test
        distinct = min(trainer.steps * args.batch_size, len(source)) if not source.unlimited else \
            trainer.steps * args.batch_size
        rows.append({"data": name, "seconds_training": round(trainer.seconds, 2), "seconds_wall": round(wall, 2),
                     "seconds_before": round(before, 2), "steps": trainer.steps, "epochs": trainer.epoch,
                     "distinct_samples": distinct, "test_rmse": test_metrics["rmse"],
                     "test_rmse_d1": test_metrics["rmse_d1"], "test_rmse_d2": test_metrics["rmse_d2"]})
        r = rows[-1]
        print(f"{name:>20}: {r['steps']:6d} steps, {r['epochs']:4d} epochs, {r['distinct_samples']:7d} distinct "
              f"samples in {r['seconds_training']:.0f} s (+{r['seconds_before']:.0f} s before) | test RMSE "
              f"{r['test_rmse']:.3e}, d1 {r['test_rmse_d1']:.3e}, d2 {r['test_rmse_d2']:.3e}", flush=True)
    if not args.keep_caches:
        shutil.rmtree(path, ignore_errors=True)
    return rows


def _warm_up(cube: Cube, args) -> None:
    """One step of a throwaway run: the one-time costs of a first run (imports, first calls)
    are nobody's to pay within the time budget."""
    source = OnTheFlySource(cube, 2 * args.batch_size, mode="pool", seed=1)
    x, y = source.batch(torch.arange(len(source)), 0, 0)
    model = build_model(MLPConfig(hidden=tuple(args.hidden)), x.value, y.value, seed=0)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, eval_every=0, progress=False)
    Trainer(model, objective(), source, None, config).fit()


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0, 8.0], metavar="GB",
                        help="cache sizes for the memory measurement (default 1 4 8)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per memory measurement (default 300)")
    parser.add_argument("--memory-up-to", type=float, default=None, metavar="GB",
                        help="also train from the cache loaded into memory, for sizes up to this")
    parser.add_argument("--seconds", type=float, default=300.0, help="training seconds per variant in part 2")
    parser.add_argument("--n-cached", type=int, default=8192, help="samples of the cache (and pool) in part 2")
    parser.add_argument("--n-test", type=int, default=1000, help="test samples in part 2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    parser.add_argument("--image-size", type=int, default=41, help="cube image size (default 41, the paper's)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes generating the caches")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for training")
    parser.add_argument("--cache-dir", default=None,
                        help="keep the caches here (reused by later runs); default: a temporary folder, removed")
    parser.add_argument("--parts", nargs="+", choices=("memory", "time"), default=["memory", "time"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budgets: a smoke run of seconds")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not Path("/proc/self/status").exists():
        raise SystemExit("data_memory.py reads the resident memory from /proc: Linux only")
    if args.quick:
        # In this process (no process start-ups), one worker: seconds, not minutes.
        args.sizes_gb, args.steps, args.seconds, args.n_cached, args.n_test = [0.002, 0.008], 10, 1.0, 96, 32
        args.hidden, args.image_size, args.shard_size, args.batch_size = [16], 11, 64, 16
        args.workers = 1
        if args.memory_up_to is None:
            args.memory_up_to = 0.002
    args.keep_caches = args.cache_dir is not None
    folder = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="data-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"order-2 cube jets ({args.image_size}x{args.image_size}), {sample_bytes(cube_for(args)) / 1e3:.1f} KB a "
          f"sample in float32; caches in {folder}", flush=True)
    results = {"command": command_line(argv, __file__), "machine": machine_info(), "settings": {
        k: v for k, v in vars(args).items() if k not in ("child", "out")}}
    try:
        if "memory" in args.parts:
            results["memory"] = memory_rows(args, folder)
        if "time" in args.parts:
            results["equal_time"] = equal_time_rows(args, folder)
    finally:
        if not args.keep_caches:
            shutil.rmtree(folder, ignore_errors=True)
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
