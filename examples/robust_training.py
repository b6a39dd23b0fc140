"""Oracle-robust training against the conventional invariance baseline, and what each costs.

Trains the same network on the same cube data three ways, through the one Trainer:

* invariance (the conventional baseline): values plus the Jacobian penalty, i.e. "the answer
  must not change under noise";
* adversarial (its strongest form): values plus adversarial training with the clean target
  in an L2 ball (Madry et al. 2018);
* oracle: second-order derivative training plus the oracle term along the top direction of
  the error operator E = N'(x) - Y J^+ ("the answer must change as the exact oracle says");

records the worst-case amplification of each network during training (a Trainer metric,
:class:`manifoldtrain.robustness.Robustness`), then scores each with
:func:`manifoldtrain.robustness.evaluate_robustness` (clean RMSE, amplification and its
invariance / sensitivity parts, noisy RMSE and adversarial error against the exact oracle)
and draws the worst-case perturbation of each network.

Run: ``python examples/robust_training.py [--seconds 60] [--out worst_case.png] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import JetRMSE
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import (AdversarialInvarianceTerm, DerivativeTerm, HessianOracleTerm, JacobianInvarianceTerm,
                                      Objective, ValueTerm)
from manifoldtrain.plotting import plot_worst_case
from manifoldtrain.robustness import Robustness, amplification, evaluate_robustness
from manifoldtrain.training import Trainer, TrainConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per network")
    parser.add_argument("--out", default=None, help="the worst-case figure (default: in a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    if args.quick:
        cube, n_train, n_test, hidden, seconds = Cube(image_size=15), 64, 8, (16,), 1.0
    else:
        cube, n_train, n_test, hidden, seconds = Cube(), 1000, 100, (128, 128, 128), args.seconds
    train, test = generate_jets(cube, n_train + n_test, seed=0).split(n_test, seed=0)
    strength = 0.03  # Jacobian term: noise level per pixel; Hessian oracle term: the L2 norm of its perturbation
    objectives = {
        "invariance": Objective((ValueTerm(), JacobianInvarianceTerm(strength, directions=2))),
        "adversarial": Objective((ValueTerm(), AdversarialInvarianceTerm(0.3, steps=3))),  # the L2 radius 0.3
        "oracle": Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2, weight=0.03),
                             HessianOracleTerm(strength, directions=1, iterations=2))),
    }
    panels = []
    for name, objective in objectives.items():
        model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value, seed=0)
        config = TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, progress=False)
        metrics = [JetRMSE(), Robustness(samples=min(n_test, 50))]  # amplification during training, too
        trainer = Trainer(model, objective, train, test, config, metrics=metrics)
        trainer.fit()
        report = evaluate_robustness(model, cube, test, noise_levels=(0.01,), budgets=(0.3,), steps=3)
        print(f"{name:>11}: clean RMSE {report.test_rmse:.3e}, amplification {report.amplification:.3g} "
              f"(invariance part {report.invariance_part:.3g}, sensitivity part {report.sensitivity_part:.3g}), "
              f"noisy RMSE at 0.01 {report.noisy_rmse[0.01]:.3e}, adversarial error at 0.3 {report.adversarial_error[0.3]:.3e}")
        worst = amplification(model, test.subset(slice(0, 1)))
        panels.append((name, float(worst.full[0]), worst.vectors[0]))
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="robust-"), "worst_case.png")
    plot_worst_case(test.inputs.value[0], panels, 1.0, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
