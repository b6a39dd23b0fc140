"""Why random-direction oracle training loses to Hessian-aligned directions: the variance of
the random term, not its mean (issue 24, item 3).

On one fixed batch of cube samples and a fixed network (a random tanh MLP, float64), the
order-1 oracle term of :class:`~manifoldtrain.objectives.OracleTerm` is
:math:`\\operatorname{mean} (E \\delta)^2` with :math:`\\delta = \\sigma g`, ``g`` standard
normal per input entry: an unbiased estimate of :math:`\\sigma^2 \\overline{\\lVert E \\rVert_F^2} / m`
(mean over the batch, ``m`` outputs). Per draw of ``k`` directions it is measured ``--draws``
times: its mean (against the exact value from the explicit operator), its standard deviation
and relative standard deviation, against the Gaussian theory
:math:`\\operatorname{Var} \\lVert E g \\rVert^2 = 2 \\lVert E^T E \\rVert_F^2 = 2 \\sum_i s_i^4`
(per sample and direction, divided by ``n k`` for the batch). The same for
:class:`~manifoldtrain.objectives.HessianOracleTerm` (:math:`\\delta = \\sigma v` along the top
``k`` right singular vectors found by 2 subspace iterations from a random start: its only
randomness), whose target is :math:`\\sigma^2 \\sum_{j \\le k} s_j^2 / (k m)`. Also per sample:
:math:`\\lVert E \\rVert_F^2 / \\lVert E \\rVert_2^2`.

Note the units: the random term's ``strength`` is a noise level per input entry (its
:math:`\\delta` has L2 norm about :math:`\\sigma \\sqrt{N}`, 41 :math:`\\sigma` on the 41x41
cube), the Hessian term's is the L2 norm of :math:`\\delta` itself; at equal strength their
means differ by :math:`\\lVert E \\rVert_F^2 / \\lVert E \\rVert_2^2` only.

Usage::

    python benchmarks/oracle_term_variance.py --out benchmarks/results/oracle_term_variance.json
    python benchmarks/oracle_term_variance.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import Tanh
from manifoldtrain.robustness import ErrorOperator, spectral_norm

F64 = torch.float64


def measure(args) -> dict:
    cube = Cube(image_size=args.image_size)
    p = cube.sample(args.batch, torch.Generator().manual_seed(0), dtype=F64)
    x, y = cube.jets(p, order=1)
    torch.manual_seed(args.seed)
    n_in = args.image_size ** 2
    layers, width = [torch.nn.Flatten()], n_in
    for h in args.hidden:
        layers += [torch.nn.Linear(width, h), Tanh()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 9)).double()
    op = ErrorOperator(model, x, y)
    e = op.matrix().detach()  # [n, m, N]
    m = e.shape[1]
    s = torch.linalg.svdvals(e)  # [n, m]
    fro2 = s.pow(2).sum(1)
    ratio = fro2 / s[:, 0].pow(2)
    sigma = args.strength
    exact = sigma ** 2 * float(fro2.mean()) / m
    var_one = 2 * s.pow(4).sum(1)  # Var |E g|^2 per sample and direction
    out = {"batch": args.batch, "outputs": m, "inputs": n_in, "strength": sigma,
           "fro2_over_spec2": {"min": float(ratio.min()), "median": float(ratio.median()), "max": float(ratio.max())},
           "random": [], "hessian": []}
    print(f"||E||_F^2 / ||E||_2^2 per sample: min {ratio.min():.3f}, median {ratio.median():.3f}, max {ratio.max():.3f}")
    g = torch.Generator().manual_seed(1)
    for k in args.directions:
        vals = []
        for _ in range(args.draws):
            delta = sigma * torch.randn(len(p), k, *x.shape, generator=g, dtype=F64)
            vals.append(float(op.apply(delta).detach().pow(2).mean()))
        t = torch.tensor(vals, dtype=F64)
        theory_sd = sigma ** 2 * math.sqrt(float(var_one.sum()) / k) / (len(p) * m)
        row = {"k": k, "draws": args.draws, "mean": float(t.mean()), "exact": exact,
               "mean_error_in_sd_of_mean": float((t.mean() - exact) / (t.std() / math.sqrt(len(t)))),
               "sd": float(t.std()), "relative_sd": float(t.std() / t.mean()), "theory_relative_sd": theory_sd / exact,
               "per_sample_direction_relative_sd_theory": float((var_one.sqrt() / fro2).median())}
        out["random"].append(row)
        print(f"random k={k}: mean {row['mean']:.4e} vs exact {exact:.4e} ({row['mean_error_in_sd_of_mean']:+.2f} sd of the "
              f"mean), relative sd {row['relative_sd']:.3f} (theory {row['theory_relative_sd']:.3f}; one sample, one "
              f"direction: {row['per_sample_direction_relative_sd_theory']:.2f})", flush=True)
        vals = []
        for _ in range(args.hessian_draws):
            top = spectral_norm(op, block=k, iterations=2, tol=0.0, generator=g)
            vals.append(float(op.apply(sigma * top.vectors).detach().pow(2).mean()))
        t = torch.tensor(vals, dtype=F64)
        target = sigma ** 2 * float(s[:, :k].pow(2).sum(1).mean()) / (k * m)
        row = {"k": k, "draws": args.hessian_draws, "mean": float(t.mean()), "target": target, "sd": float(t.std()),
               "relative_sd": float(t.std() / t.mean())}
        out["hessian"].append(row)
        print(f"hessian k={k}: mean {row['mean']:.4e} vs sigma^2 sum s_j^2/(k m) {target:.4e}, relative sd "
              f"{row['relative_sd']:.2e}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, default=32, help="cube samples in the fixed batch (default 32)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="hidden widths of the tanh MLP")
    parser.add_argument("--directions", type=int, nargs="+", default=[1, 4, 16], help="k, directions per sample")
    parser.add_argument("--draws", type=int, default=200, help="draws of the random term per k")
    parser.add_argument("--hessian-draws", type=int, default=20, help="draws (random starts) of the Hessian term per k")
    parser.add_argument("--strength", type=float, default=0.03)
    parser.add_argument("--image-size", type=int, default=41)
    parser.add_argument("--seed", type=int, default=0, help="the network's initial weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a small cube and few draws: a smoke run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.hidden, args.directions, args.draws, args.hessian_draws, args.image_size = 4, [16], [1, 2], 20, 3, 15
    torch.set_num_threads(args.threads)
    results = {"command": command_line(argv, __file__), "machine": machine_info(),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    results |= measure(args)
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
