"""Why random pairs of directions train worse than the full second order at equal wall-clock:
the noise of the gradient, measured (issue 24, item 4).

``Objective.second_order(directions=k)`` replaces the full first- and second-order terms by
their estimates along ``k`` random directions (pairs of directions for the second order): the
same loss in expectation (tested), ``1 + 3k`` jet rows a step instead of ``1 + d + d(d+1)/2``
(28 on the cube). ``docs/accuracy.rst`` measured that it trains worse at equal wall-clock
(``k = 1``: 4x the full term's test RMSE) and guessed at the reason: the noise of its
gradients. This script measures that noise, on the setting of that measurement (cube 41x41,
tanh MLP 3x256, batch 64, the default weights 1, 1, 0.03), at two states of the network: its
initial weights and after ``--epochs`` epochs of full second-order training.

At each state, with ``G`` the gradient of the full objective over all training samples, and
``g`` the gradient of one training step (a random batch of 64, and for ``k`` pairs one draw of
directions), over ``--steps`` steps:

* the relative noise :math:`\\overline{\\lVert g - G \\rVert^2} / \\lVert G \\rVert^2` (the full
  term's is its batch noise alone; a random term's adds the directions' noise);
* the noise at equal cost: the relative noise times the step's jet rows. Averaging ``m`` steps
  divides the noise by ``m`` at ``m`` times the cost, so at equal wall-clock (a step's cost
  about proportional to its rows) the estimator with the lower product gets more signal per
  second;
* the relative bias :math:`\\lVert \\bar g - G \\rVert / \\lVert G \\rVert` with its standard
  error (the estimates are unbiased: it should be within a few standard errors of 0);
* what Adam sees: per parameter the mean square :math:`\\overline{g^2}` (Adam's second moment),
  its median ratio to the full term's (a ratio ``r`` shrinks Adam's steps by about
  :math:`\\sqrt r` in the directions where the signal is), and the signal fraction
  :math:`\\sum G^2 / \\sum \\overline{g^2}`;
* the same for the first- and second-order terms alone (the noise's source).

Besides ``k`` random pairs ``(u_a, v_a)`` (``1 + 3k`` rows), the grid estimator
(``Objective.second_order(directions=k, grid=True)``): every pair ``(u_a, v_b)``, ``k**2``
mixed derivatives from ``2k`` first-order rows (``1 + 2k + k**2`` rows), exact at ``k = d``.

Usage::

    python benchmarks/random_pair_gradients.py --out benchmarks/results/random_pair_gradients.json
    python benchmarks/random_pair_gradients.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.data.statistics import LossScales
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.records import command_line, machine_info, write_text_atomic
from manifoldtrain.training import Trainer, TrainConfig


#: The terms of ``Objective.second_order``, in order.
ROLES = ("value", "d1", "d2")


def _flat_grad(model: torch.nn.Module, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=retain_graph)])


def gradients(model, objective: Objective, x, y, scales: LossScales, generator=None, only: str | None = None):
    """The gradient of ``objective``'s loss on the batch ``(x, y)`` (unscaled jets), flattened;
    with ``only``, of that term's loss alone."""
    losses = objective.losses(model, x, y, scales, generator=generator)
    loss = losses[only] if only is not None else sum(losses.values())
    return _flat_grad(model, loss)


def full_batch_gradient(model, objective, x, y, scales, chunk: int, only=None) -> torch.Tensor:
    """The mean gradient over all samples of ``(x, y)``, ``chunk`` samples at a time."""
    n, total = len(x), None
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        g = gradients(model, objective, x[sl], y[sl], scales, only=only) * (sl.stop - sl.start)
        total = g if total is None else total + g
    return total / n


def noise_stats(steps: list[torch.Tensor], reference: torch.Tensor, rows: int, full_second_moment=None) -> dict:
    """Relative noise, its product with the rows a step costs, relative bias with its standard
    error, and (given the full term's per-parameter mean square) Adam's second-moment ratio."""
    g = torch.stack(steps)  # [steps, p]
    ref2 = reference.pow(2).sum()
    noise = (g - reference).pow(2).sum(1) / ref2
    mean = g.mean(0)
    second = g.pow(2).mean(0)
    out = {
        "relative_noise": noise.mean().item(),
        "noise_times_rows": noise.mean().item() * rows,
        "relative_bias": ((mean - reference).norm() / reference.norm()).item(),
        "bias_standard_error": (noise.mean().item() / len(steps)) ** 0.5,
        "signal_fraction": (ref2 / second.sum()).item(),
        "rows": rows,
    }
    if full_second_moment is not None:
        keep = full_second_moment > 0
        out["adam_second_moment_ratio_median"] = (second[keep] / full_second_moment[keep]).median().item()
    return out, second


def measure(args) -> dict:
    torch.manual_seed(args.seed)
    cube = Cube() if not args.quick else Cube(image_size=11, extent=0.6, sigma=0.08)
    data = generate_jets(cube, args.n_train, seed=1000 + args.seed, progress=False)
    x, y = data.inputs, data.targets
    scales = LossScales.from_data(x, y)
    model = build_model(MLPConfig(hidden=tuple(args.hidden)), x.value, y.value, seed=args.seed)
    d = x.param_dim
    estimators = {"full": (Objective.second_order(), 1 + d + d * (d + 1) // 2)}
    for k in args.directions:
        estimators[f"{k} random"] = (Objective.second_order(directions=k), 1 + 3 * k)
    for k in args.grids:
        estimators[f"{k}x{k} grid"] = (Objective.second_order(directions=k, grid=True), 1 + 2 * k + k * k)
    out = {"states": {}}
    for state in ("initial", "trained"):
        if state == "trained":
            t0 = time.perf_counter()
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=1e-3, seed=args.seed,
                              progress=False, eval_every=0)
            Trainer(model, Objective.second_order(), data, None, cfg).fit()
            out["training_seconds"] = time.perf_counter() - t0
        G = full_batch_gradient(model, estimators["full"][0], x, y, scales, args.chunk)
        G_terms = {role: full_batch_gradient(model, estimators["full"][0], x, y, scales, args.chunk, only=name)
                   for role, name in zip(ROLES, estimators["full"][0].names)}
        batches = torch.Generator().manual_seed(args.seed)
        picks = [torch.randperm(len(x), generator=batches)[: args.batch_size] for _ in range(args.steps)]
        rows_out, full_second = {}, {}
        for name, (objective, rows) in estimators.items():
            draws = torch.Generator().manual_seed(args.seed + 1)
            steps = {role: [] for role in ("objective", *ROLES)}
            for idx in picks:
                losses = objective.losses(model, x[idx], y[idx], scales, generator=draws)
                for role, term in zip(ROLES, objective.names):
                    steps[role].append(_flat_grad(model, losses[term], retain_graph=True))
                steps["objective"].append(sum(steps[role][-1] for role in ROLES))
            rows_out[name] = {}
            for role, reference in (("objective", G), *G_terms.items()):
                stats, second = noise_stats(steps[role], reference, rows, full_second.get(role))
                if name == "full":
                    full_second[role] = second
                    stats["adam_second_moment_ratio_median"] = 1.0
                rows_out[name][role] = stats
        out["states"][state] = {"gradient_norm": G.norm().item(),
                                **{f"{role}_gradient_norm": g.norm().item() for role, g in G_terms.items()},
                                "estimators": rows_out}
    return out


def format_table(result: dict) -> str:
    lines = []
    for state, s in result["states"].items():
        lines.append(f"\n{state} weights: |G| {s['gradient_norm']:.3g}; its terms' "
                     + ", ".join(f"{role} {s[role + '_gradient_norm']:.3g}" for role in ROLES))
        lines.append("| estimator | rows | rel. noise | noise x rows (/ full) | bias (s.e.) | Adam v ratio | "
                     "d1 term: rel. noise, x rows (/ full) | d2 term: rel. noise, x rows (/ full) | d2: Adam v ratio |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        full = s["estimators"]["full"]
        for name, r in s["estimators"].items():
            o = r["objective"]

            def both(role):
                t = r[role]
                return f"{t['relative_noise']:.3g}, {t['noise_times_rows']:.3g} ({t['noise_times_rows'] / full[role]['noise_times_rows']:.2f})"

            lines.append(f"| {name} | {o['rows']} | {o['relative_noise']:.3g} | {both('objective').split(', ')[1]} | "
                         f"{o['relative_bias']:.2g} ({o['bias_standard_error']:.2g}) | "
                         f"{o['adam_second_moment_ratio_median']:.3g} | {both('d1')} | {both('d2')} | "
                         f"{r['d2']['adam_second_moment_ratio_median']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--n-train", type=int, default=1000, help="training samples (default 1000, as in accuracy.rst)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    ap.add_argument("--directions", type=int, nargs="+", default=[1, 2, 4, 8], help="the k of the random estimators")
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4],
                    help="the k of the grid estimators (all k x k pairs of k and k directions)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64, help="training steps (batches and draws) per estimator")
    ap.add_argument("--epochs", type=int, default=40, help="epochs of full second-order training before the second state")
    ap.add_argument("--chunk", type=int, default=250, help="samples at a time for the full-batch gradient")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    ap.add_argument("--out", default=None, help="write the result (JSON) here")
    args = ap.parse_args(argv)
    for name in ("n_train", "hidden", "directions", "grids", "batch_size", "steps", "chunk", "threads"):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected integers >= 1, got {values}")
    if args.epochs < 0:
        ap.error(f"--epochs: expected an integer >= 0, got {args.epochs}")
    if args.quick:
        args.n_train, args.hidden, args.directions, args.grids, args.steps, args.epochs, args.batch_size = (
            40, [16], [1, 2], [2], 4, 1, 8)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = measure(args)
    result.update(seconds=time.perf_counter() - t0, command=command_line(argv, __file__), machine=machine_info(),
                  settings={k: v for k, v in vars(args).items() if k != "out"})
    print(format_table(result))
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
