"""The exact oracle on the cube: focal distances, the cost of the second-order test, and the
error of the first- and second-order Taylor oracles against it (issue 24).

Part 1, focal distances: the smallest focal distance (1 / the largest normal curvature,
:func:`manifoldtrain.robustness.focal_distance`) at ``--focal-samples`` cube points, float64.

Part 2, cost: :func:`~manifoldtrain.robustness.exact_oracle` on ``--cost-samples`` points,
float64, for perturbations of L2 norm 0.3 and 1.0 in random directions and of 1.2 times the
focal distance along the normal of largest curvature (a saddle at the clean point), best of
``--repeats``; against the plain Gauss-Newton search that the oracle ran before the
second-order test (``exact_oracle(..., second_order_test=False)``, the same code), and the order-2 jets it adds.

Part 3, Taylor oracles: the error in target units (norm over the 9 outputs, median over
samples) of :func:`~manifoldtrain.robustness.taylor_oracle` of order 1 and 2 against the exact
oracle, for perturbations of relative size ``|delta| / |x|`` 0.05 to 0.5 along (a) a random
tangent direction ``J v``, (b) that plus a random normal direction of the same length, (c)
the tangent plus the normal of largest curvature ("curved normal"), (d) the curved normal
alone (where both Taylor oracles say "no change", right below the focal distance, wrong past
it); with the exact answer's own change ``|O - y|`` for scale.

Usage::

    python benchmarks/oracle_focal.py --out benchmarks/results/oracle_focal.json
    python benchmarks/oracle_focal.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.robustness import exact_oracle, focal_distance, taylor_oracle

F64 = torch.float64


def quantiles(t: torch.Tensor) -> dict:
    t = t.double()
    q = torch.quantile(t, torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0], dtype=F64))
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(v) for v in q)))


def focal_part(cube: Cube, n: int) -> dict:
    p = cube.sample(n, torch.Generator().manual_seed(100), dtype=F64)
    x, _ = cube.jets(p)
    fd = focal_distance(x).distance
    below_budget = int((fd < 1.0).sum())
    print(f"focal distances over {n} samples: " + ", ".join(f"{k} {v:.3f}" for k, v in quantiles(fd).items())
          + f"; {below_budget} below 1.0", flush=True)
    return {"samples": n, "quantiles": quantiles(fd), "below_1.0": below_budget}


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def cost_part(cube: Cube, n: int, repeats: int) -> list[dict]:
    p = cube.sample(n, torch.Generator().manual_seed(0), dtype=F64)
    x, _ = cube.jets(p, order=1)
    x2, _ = cube.jets(p)
    g = torch.randn(x.value.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    fd = focal_distance(x2)
    cases = [("random L2 0.3", x.value + 0.3 * g), ("random L2 1.0", x.value + 1.0 * g),
             ("1.2 x focal distance along the normal", x.value + (1.2 * fd.distance).reshape(-1, 1, 1) * fd.normal)]
    jets2, _ = best_of(lambda: cube.jets(p, order=2), repeats)
    rows = []
    for name, pert in cases:
        before, plain = best_of(lambda: exact_oracle(cube, p, pert, strict=False, start_jet=x, second_order_test=False), repeats)
        after, res = best_of(lambda: exact_oracle(cube, p, pert, strict=False, start_jet=x), repeats)
        row = {"case": name, "samples": n, "gauss_newton_s": before, "exact_oracle_s": after, "order2_jets_s": jets2,
               "stationary_before": int(plain.converged.sum()), "converged_after": int(res.converged.sum()),
               "escapes": int((res.escapes > 0).sum()), "iterations_after": res.iterations}
        print(f"{name}: plain Gauss-Newton {before:.3f} s ({row['stationary_before']}/{n} stationary), exact_oracle "
              f"{after:.3f} s ({row['converged_after']}/{n} converged to a minimum, {row['escapes']} escaped a saddle); "
              f"order-2 jets alone {jets2:.3f} s", flush=True)
        rows.append(row)
    return rows


def taylor_part(cube: Cube, n: int, sizes: list[float]) -> list[dict]:
    p = cube.sample(n, torch.Generator().manual_seed(2), dtype=F64)
    x, y = cube.jets(p)
    gen = torch.Generator().manual_seed(3)
    flat = x.d1.reshape(n, 6, -1)
    q, _ = torch.linalg.qr(flat.transpose(1, 2))
    tangent = torch.einsum("nd,ndp->np", torch.randn(n, 6, generator=gen, dtype=F64), flat)
    g = torch.randn(n, flat.shape[-1], generator=gen, dtype=F64)
    normal = g - ((g.unsqueeze(1) @ q) @ q.transpose(1, 2)).squeeze(1)
    focal = focal_distance(x).normal.reshape(n, -1)
    xnorm = x.value.flatten(1).norm(dim=1)
    rows = []
    unit = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    for kind, direction in (("tangent", tangent), ("tangent + random normal", unit(tangent) + unit(normal)),
                            ("tangent + curved normal", unit(tangent) + focal), ("curved normal", focal)):
        direction = unit(direction)
        for rel in sizes:
            delta = ((rel * xnorm).unsqueeze(1) * direction).reshape(x.value.shape)
            res = exact_oracle(cube, p, x.value + delta, strict=False, tol=1e-11)
            ok = res.converged
            errs = {o: (taylor_oracle(x, y, delta, o) - res.target).norm(dim=1)[ok] for o in (1, 2)}
            change = (res.target - y.value).norm(dim=1)[ok]
            row = {"direction": kind, "relative_size": rel, "l2_median": float((rel * xnorm).median()),
                   "converged": int(ok.sum()), "escaped": int((res.escapes > 0).sum()),
                   "order1_error_median": float(errs[1].median()), "order2_error_median": float(errs[2].median()),
                   "order2_better_fraction": float((errs[2] < errs[1]).double().mean()),
                   "exact_change_median": float(change.median())}
            print(f"{kind:28s} |delta|/|x| {rel:4.2f} (L2 {row['l2_median']:.2f}): order 1 {row['order1_error_median']:.2e}, "
                  f"order 2 {row['order2_error_median']:.2e} (better on {100 * row['order2_better_fraction']:.0f}%), "
                  f"|O - y| {row['exact_change_median']:.2e}, converged {row['converged']}/{n}, escaped {row['escaped']}",
                  flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--focal-samples", type=int, default=200)
    parser.add_argument("--cost-samples", type=int, default=64)
    parser.add_argument("--taylor-samples", type=int, default=32)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a few samples: a smoke run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.focal_samples, args.cost_samples, args.taylor_samples, args.sizes, args.repeats = 8, 4, 4, [0.05, 0.2], 1
    torch.set_num_threads(args.threads)
    cube = Cube()
    results = {"command": command_line(argv, __file__), "machine": machine_info(),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    results["focal_distance"] = focal_part(cube, args.focal_samples)
    results["cost"] = cost_part(cube, args.cost_samples, args.repeats)
    results["taylor"] = taylor_part(cube, args.taylor_samples, args.sizes)
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
