"""Speed of order-2 jets of the bundled manifolds: analytic against the obvious slow paths.

For the default cube (``--manifold cube``) and the default phase-retrieval manifold
(``--manifold phase-retrieval``), compared in the same run, per dtype and batch size, in
samples per second:

* ``exact``: the manifold's :meth:`~manifoldtrain.Manifold.jets` (analytic first and second
  derivatives: the cube's edge moments; the phase-retrieval object's Gaussian derivatives,
  DFT'd, then the product and chain rules);
* ``finite differences``: central differences of the exact input, 1 + 2d + 2d(d-1) inputs
  per sample (73 for d = 6), each at the moved point (:meth:`~manifoldtrain.Manifold.move`)
  by the same value path, step 1e-3;
* ``torch.func``: nested forward-mode autodiff of :meth:`~manifoldtrain.Manifold.input` (the
  library's default jets for a manifold without analytic derivatives), small batches only
  for the cube.

The relative error of the finite-difference jets against the exact ones is reported too.

Usage::

    python benchmarks/render.py                # full table, both manifolds, about 8 minutes on 2 cores
    python benchmarks/render.py --quick        # smoke run, seconds
    python benchmarks/render.py --out results/render.json
    python benchmarks/render.py --manifold cube --step-cost   # also: rendering beside a training step
    python benchmarks/render.py --manifold cube --step-cost --device cuda   # on a GPU
    # old against new code: the same script, the package from each checkout, alternately
    for c in OLD NEW OLD NEW; do PYTHONPATH=$c python benchmarks/render.py --manifold cube \
        --exact-only --cpu-time --threads 1 --batch-sizes 64 256 1024; done

``--step-cost`` (cube only) also times one full second-order training step
(``Objective.second_order()``, MLP 3x256 tanh, batch 64, ``Trainer.batch`` and ``Trainer.step``
as in ``benchmarks/train_speed.py``) per sample on the same machine and threads, and prints
each cube row's render time per sample over that step time: the cost of rendering the
training data on the fly, as a fraction of the step it feeds (goal: at most 1/4 in float32).
The cube's ``torch.compile`` option (``MANIFOLDTRAIN_CUBE_COMPILE=1``, see ``Cube.jets``) is
read from the environment as usual.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from manifoldtrain import Jet, num_pairs, triu_pairs
from manifoldtrain.devices import device_argument
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.training import flush_denormals


MANIFOLDS = {"cube": Cube, "phase-retrieval": PhaseRetrieval}
#: torch.func jets are timed up to this batch size (the cube's are slow).
AUTODIFF_MAX_BATCH = {"cube": 4, "phase-retrieval": 256}


def finite_difference_jets(cube, points: torch.Tensor, step: float) -> Jet:
    """Central-difference order-2 jets of the exact input (73 renders per sample for d = 6)."""
    n, d = points.shape[0], cube.param_dim
    eye = torch.eye(d, dtype=points.dtype) * step
    i, j = triu_pairs(d)
    off = i != j
    ei, ej = eye[i[off]], eye[j[off]]
    offsets = torch.cat([torch.zeros(1, d, dtype=points.dtype), eye, -eye, ei + ej, ei - ej, -ei + ej, -ei - ej])
    m = offsets.shape[0]
    moved = cube.move(points.repeat_interleave(m, 0), offsets.repeat(n, 1))
    images = cube.jets(moved, order=0)[0].value.reshape(n, m, *cube.input_shape)
    f0, fp, fm = images[:, 0], images[:, 1 : d + 1], images[:, d + 1 : 2 * d + 1]
    q = int(off.sum())
    pp, pm, mp, mm = (images[:, 2 * d + 1 + k * q : 2 * d + 1 + (k + 1) * q] for k in range(4))
    d2 = images.new_empty(n, num_pairs(d), *cube.input_shape)
    d2[:, ~off] = (fp - 2 * f0[:, None] + fm) / step**2
    d2[:, off] = (pp - pm - mp + mm) / (4 * step**2)
    return Jet(f0, (fp - fm) / (2 * step), d2)


def timed(fn, min_time: float, max_calls: int = 50, clock=time.perf_counter) -> tuple[float, object]:
    """Best seconds per call over repeated calls (at least one, until ``min_time`` has passed)."""
    result = fn()  # warm-up
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 1 or (spent < min_time and calls < max_calls):
        t0 = clock()
        result = fn()
        dt = clock() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return best, result


def run(batch_sizes, dtypes, min_time: float, autodiff_max_batch: int, fd_max_batch: int, seed: int = 0,
        manifold: str = "cube", order: int = 2, clock=time.perf_counter, device="cpu") -> list[dict]:
    """Rows of the table; ``order`` < 2 or ``fd_max_batch = autodiff_max_batch = 0`` time the
    exact jets only; ``clock`` times every call (``time.process_time``: CPU time); points and
    jets on ``device``."""
    cube = MANIFOLDS[manifold]()
    rows = []
    if order < 2:
        fd_max_batch = autodiff_max_batch = 0
    for dtype in dtypes:
        for n in batch_sizes:
            points = cube.sample(n, torch.Generator().manual_seed(seed), dtype=dtype, device=device)
            t_exact, (exact, _) = timed(lambda: cube.jets(points, order), min_time, clock=clock)
            row = {"manifold": manifold, "dtype": str(dtype).removeprefix("torch."), "batch": n, "order": order,
                   "exact_samples_per_s": n / t_exact}
            if n <= fd_max_batch:
                t_fd, fd = timed(lambda: finite_difference_jets(cube, points, 1e-3), min_time, max_calls=3, clock=clock)
                row["fd_samples_per_s"] = n / t_fd
                row["fd_rel_error_d1"] = float((fd.d1 - exact.d1).abs().max() / exact.d1.abs().max())
                row["fd_rel_error_d2"] = float((fd.d2 - exact.d2).abs().max() / exact.d2.abs().max())
            if n <= autodiff_max_batch:
                t_ad, _ = timed(lambda: cube.default_jets(points), min_time, max_calls=3, clock=clock)
                row["torch_func_samples_per_s"] = n / t_ad
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def second_order_step_seconds(batch: int = 64, hidden=(256, 256, 256), steps: int = 20, seed: int = 0,
                              n_train: int = 256, device="cpu", clock=time.perf_counter) -> float:
    """Seconds per sample of one full second-order training step (``Objective.second_order()``,
    MLP ``hidden`` tanh, ``batch``): ``Trainer.batch`` then ``Trainer.step`` (loss, backward,
    AdamW), the fastest of ``steps`` after two warm-up steps, on cube jets (float32)."""
    from manifoldtrain.data import generate_jets
    from manifoldtrain.nn import MLPConfig, build_model
    from manifoldtrain.objectives import Objective
    from manifoldtrain.training import Trainer, TrainConfig

    train = generate_jets(Cube(), n_train, seed=seed, progress=False)
    model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=seed).to(device)
    trainer = Trainer(model, Objective.second_order(), train, None,
                      TrainConfig(batch_size=batch, progress=False, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    best = float("inf")
    for k in range(steps + 2):
        idx = torch.randint(len(train), (batch,), generator=gen)
        t0 = clock()
        trainer.step(trainer.batch(idx))
        if k >= 2:
            best = min(best, clock() - t0)
    return best / batch


def _synchronised(clock, device):
    """``clock`` read after the device's queued work is done (CUDA runs asynchronously)."""
    def read() -> float:
        torch.cuda.synchronize(device)
        return clock()
    return read


def _format_row(row: dict) -> str:
    def cell(key, fmt="{:9.0f}"):
        return fmt.format(row[key]) if key in row else " " * 9

    ratio = row["exact_samples_per_s"] / row["fd_samples_per_s"] if "fd_samples_per_s" in row else None
    return (
        f"| {row['manifold']:<15} | {row['dtype']:<7} | {row['batch']:5d} | {cell('exact_samples_per_s')} | {cell('fd_samples_per_s')} | "
        f"{(f'{ratio:7.1f}x' if ratio else ' ' * 8)} | {cell('torch_func_samples_per_s', '{:9.1f}')} | "
        f"{cell('fd_rel_error_d1', '{:9.1e}')} | {cell('fd_rel_error_d2', '{:9.1e}')} |"
    )


HEADER = (
    "| manifold        | dtype   | batch | exact/s   | FD/s      | exact/FD | torch.func/s | FD err d1 | FD err d2 |\n"
    "|-----------------|---------|-------|-----------|-----------|----------|--------------|-----------|-----------|"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batches, short timings")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--manifold", nargs="+", choices=list(MANIFOLDS), default=list(MANIFOLDS),
                        help="which bundled manifolds (default: all)")
    parser.add_argument("--out", default=None, help="write the results as JSON here (atomically)")
    parser.add_argument("--step-cost", action="store_true",
                        help="cube: also time a full second-order training step (MLP 3x256 tanh, batch 64) per "
                             "sample and print render time / step time for each cube row")
    parser.add_argument("--exact-only", action="store_true",
                        help="time the exact jets only (no finite differences, no torch.func)")
    parser.add_argument("--order", type=int, choices=(0, 1, 2), default=2,
                        help="order of the jets (default 2; below 2 implies --exact-only)")
    parser.add_argument("--device", type=device_argument, default="cpu",
                        help="cpu (default), cuda or cuda:N: where points and jets live")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of wall-clock time (steadier on a loaded "
                             "machine; with --threads 1 it is the single thread's time)")
    args = parser.parse_args(argv)
    if args.step_cost and args.order != 2:
        parser.error(f"--step-cost compares order-2 renders with a second-order step; got --order {args.order}")
    torch.set_num_threads(args.threads)
    if args.quick:
        sizes, min_time, ad_max, fd_max = args.batch_sizes or [1, 4], 0.02, 1, 4
    else:
        sizes, min_time, ad_max, fd_max = args.batch_sizes or [1, 4, 16, 64, 256, 1024], 1.0, 4, 256
    clock = time.process_time if args.cpu_time else time.perf_counter
    device = args.device
    if device.type == "cuda":
        if args.cpu_time:
            parser.error("--cpu-time: times the CPU; on --device cuda the wall-clock time (synchronised) is the one")
        clock = _synchronised(time.perf_counter, device)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"jets of order {args.order}, {'CPU' if args.cpu_time else 'wall-clock'} time, "
          f"manifoldtrain at {(machine_info()['git_commit'] or 'unknown commit')[:10]}")
    print(HEADER)
    with flush_denormals():
        rows = []
        for name in args.manifold:
            limit = 0 if args.exact_only else ad_max if args.quick else AUTODIFF_MAX_BATCH[name]
            rows += run(sizes, [torch.float32, torch.float64], min_time, limit, 0 if args.exact_only else fd_max,
                        manifold=name, order=args.order, clock=clock, device=device)
        step = None
        if args.step_cost and "cube" in args.manifold:
            small = args.quick
            step = second_order_step_seconds(batch=16 if small else 64, hidden=(32, 32) if small else (256, 256, 256),
                                             steps=3 if small else 20, n_train=64 if small else 256, device=device,
                                             clock=clock)
            print(f"second-order training step (Objective.second_order(), MLP "
                  f"{'2x32' if small else '3x256'} tanh, batch {16 if small else 64}): {step * 1e6:.0f} us/sample")
            print("| manifold | dtype | batch | render us/sample | render / step |\n|---|---|---|---|---|")
            for row in rows:
                if row["manifold"] == "cube":
                    render = 1.0 / row["exact_samples_per_s"]
                    row["render_over_second_order_step"] = render / step
                    print(f"| cube | {row['dtype']} | {row['batch']} | {render * 1e6:.0f} | {render / step:.2f} |")
    if args.out:
        meta = {"command": command_line(argv, __file__), "clock": "cpu" if args.cpu_time else "wall", **machine_info(device)}
        if step is not None:
            meta["second_order_step_seconds_per_sample"] = step
        write_text_atomic(args.out, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
