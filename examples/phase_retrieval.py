"""Phase retrieval: value vs second-order training against HIO/ER and a direct fit, clean and noisy.

Trains the same MLP on the bundled :class:`~manifoldtrain.manifolds.PhaseRetrieval` manifold
with values only and with second-order derivatives (same data, same budget), then
reconstructs a few test patterns, clean and Poisson-noisy, with each network, with
Fienup's HIO/ER + parametric fit and with the direct multi-start fit of the parameters to the
counts (:mod:`manifoldtrain.baselines`), and prints the parameter error and time per pattern
of each (the direct fit is the most accurate). The full comparison, with the Cramer-Rao
bound, is ``benchmarks/phase_retrieval.py``.

Run: ``python examples/phase_retrieval.py [--seconds 60] [--quick]``
"""

from __future__ import annotations

import argparse
import time

import torch

from manifoldtrain.baselines import FitSettings, HIOSettings, MultistartSettings, multistart_fit, reconstruct
from manifoldtrain.data import generate_jets
from manifoldtrain.manifolds import PhaseRetrieval
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import TrainConfig, Trainer


def relative_rmse(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Each parameter's RMSE over its spread in ``truth``, averaged (1 = guessing the mean)."""
    err = (estimate.double() - truth.double()).pow(2).mean(dim=0).sqrt()
    return float((err / truth.double().std(dim=0)).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per network")
    parser.add_argument("--quick", action="store_true", help="a few seconds on tiny settings")
    args = parser.parse_args(argv)
    pr = PhaseRetrieval()
    n_train, n_test, hidden, seconds, n_hio = 1000, 200, (256, 256, 256), args.seconds, 20
    hio, fit = HIOSettings(), FitSettings()
    if args.quick:
        n_train, n_test, hidden, seconds, n_hio = 32, 8, (16,), 1.0, 2
        hio, fit = HIOSettings(iterations=20, starts=1), FitSettings(starts=2, iterations=3)

    train, test = generate_jets(pr, n_train + n_test, seed=0, progress=False).split(n_test, seed=0)
    truth = test.targets.value  # the target is the parameter vector: the points themselves
    noisy = pr.measure(truth, torch.Generator().manual_seed(1))  # Poisson counts, same transform
    inputs = {"clean": test.inputs.value, "noisy": noisy}

    for name, objective in (("value", Objective.value()), ("second", Objective.second_order())):
        torch.manual_seed(0)  # the same initial weights for both
        model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value)
        config = TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, eval_interval=seconds, progress=False)
        Trainer(model, objective, train, test, config).fit()
        with torch.no_grad():
            t0 = time.perf_counter()
            errors = {k: relative_rmse(model(x), truth) for k, x in inputs.items()}
            ms = 1e3 * (time.perf_counter() - t0) / (2 * n_test)
        print(f"{name:8s} network: relative RMSE clean {errors['clean']:.3f}, noisy {errors['noisy']:.3f}, "
              f"{ms:.3f} ms per pattern")

    for label, x in inputs.items():
        rec = reconstruct(pr, x[:n_hio].double(), hio, fit, refine=30 if not args.quick else 2)
        print(f"HIO/ER + fit ({label}, {n_hio} patterns): relative RMSE {relative_rmse(rec.fitted, truth[:n_hio]):.3f}, "
              f"+ refinement {relative_rmse(rec.params, truth[:n_hio]):.3f}, "
              f"{1e3 * rec.seconds / n_hio:.0f} ms per pattern")
        t0 = time.perf_counter()
        est, _ = multistart_fit(pr, pr.counts_from_input(x[:n_hio]).clamp_min(0),
                                MultistartSettings(iterations=3 if args.quick else 30))
        ms = 1e3 * (time.perf_counter() - t0) / n_hio
        print(f"direct fit ({label}, {n_hio} patterns): relative RMSE {relative_rmse(est, truth[:n_hio]):.3f}, "
              f"{ms:.0f} ms per pattern")


if __name__ == "__main__":
    main()
