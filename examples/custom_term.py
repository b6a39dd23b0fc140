"""A term and a metric of your own, trained next to the built-in terms, without editing the library.

``CurvaturePenalty`` penalises the network's mixed second derivative along random pairs of
directions of the manifold's coordinates, :math:`N''(x)[x_u, x_v] + N'(x)\\, x_{uv}`: it asks
the objective for those jet rows through the public term protocol, shares its random
directions (and so its rows) with the built-in random second-order term, and owns its
normaliser. ``WorstError`` is a metric: the largest absolute error over the test set, recorded
by the Trainer beside the test RMSE. Prints each term's final training loss.

Run: ``python examples/custom_term.py [--seconds 60] [--quick]``
"""

from __future__ import annotations

import argparse

import attrs
import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import JetRMSE, Metric
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Batch, DerivativeTerm, LossScales, Objective, Rows, Term, ValueTerm
from manifoldtrain.training import Trainer, TrainConfig


@attrs.frozen
class CurvaturePenalty(Term):
    """Mean square of the network's mixed second derivative along ``directions`` random pairs,
    relative to the energy of the targets' second derivatives."""

    weight: float = 1e-3
    directions: int = 1

    data_order = 2  # reads second-order input jets (x_uv)

    @property
    def name(self) -> str:
        return "curvature penalty"

    def request(self, batch: Batch) -> Rows:
        k = self.directions
        # The batch's first two sets of k directions: the same tensors the built-in
        # DerivativeTerm(2, directions=k) uses, so both terms share their jet rows.
        u, v = batch.directions(k, 0), batch.directions(k, 1)
        pairs = torch.stack([torch.arange(k), torch.arange(k, 2 * k)], dim=1)
        return Rows((batch.along(u), batch.along(v)), batch.mixed(u, v), pairs)

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return rows.out_second.pow(2).mean()

    def normaliser(self, scales: LossScales) -> float:
        return scales.target_energy(2, self.name)


class WorstError(Metric):
    """The largest absolute error of the network's value over the test set."""

    def __call__(self, model, data) -> dict[str, float]:
        param = next(model.parameters())
        with torch.no_grad():
            pred = model(data.inputs.value.to(param))
        return {"max_abs_error": float((pred - data.targets.value.to(param)).abs().max())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    if args.quick:
        cube, n_train, hidden, seconds = Cube(image_size=15), 64, (16,), 2.0
    else:
        cube, n_train, hidden, seconds = Cube(), 1000, (256, 256, 256), args.seconds

    train, test = generate_jets(cube, n_train + 200, seed=0).split(200, seed=0)
    model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value)
    objective = Objective((
        ValueTerm(),                                  # built in: N(x) ~ y
        DerivativeTerm(1),                            # built in: N'(x) x_i ~ y_i
        DerivativeTerm(2, weight=0.03, directions=2),  # built in: mixed second derivatives ~ y_uv
        CurvaturePenalty(weight=1e-3, directions=2),  # ours: the same rows, a different loss
    ))
    config = TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, eval_interval=seconds / 4)
    trainer = Trainer(model, objective, train, test, config, metrics=(JetRMSE(), WorstError()))
    history = trainer.fit()
    last = history.records[-1]
    print(f"after {last['epoch']} epochs ({last['seconds']:.0f} s), final training loss per term:")
    for name, value in last["losses"].items():
        print(f"  {name:<18} {value:.3e}")
    test = history.last_test
    print(f"test RMSE {test['rmse']:.3e}, largest error {test['max_abs_error']:.3e}")


if __name__ == "__main__":
    main()
