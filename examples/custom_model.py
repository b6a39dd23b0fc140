"""A network of your own, trained and saved through the same path as the bundled ones.

``SirenConfig`` is a model config: a frozen attrs class of settings that implements
:meth:`~manifoldtrain.nn.ModelConfig.layers`. Here, a SIREN-style network (Sitzmann et al.,
2020): sine activations, the first layer's weights scaled by ``omega`` and the others drawn
so that the activations keep their spread. Every layer (``nn.Linear``, :class:`Sine`) has a
jet rule, so derivative training runs it in Taylor mode like the built-in MLP.
:func:`~manifoldtrain.experiment.run_experiment` trains it with second-order derivative
training, writes the run folder (its ``config.toml`` names the model by its class), and
:func:`~manifoldtrain.experiment.evaluate_checkpoint` rebuilds it from the checkpoint alone.

``Snake`` is an activation of your own (Ziyin et al., 2020: :math:`v + \\sin^2(v)`), a
:class:`~manifoldtrain.nn.SmoothActivation` with closed-form first and second derivatives;
:func:`~manifoldtrain.testing.check_activation` checks them against finite differences before
anything trains, and the built-in MLP uses it by its import path,
``MLPConfig(activation="custom_model:Snake")`` (``activation = "custom_model:Snake"`` in a
config file's ``[model]`` table; this file's folder must be on the path, as it is when the
script runs).

Prints each network's test RMSE and, rebuilt from its checkpoint, its RMSE on fresh poses;
from a config file, the model class is named ``kind = "package.module:SirenConfig"`` in the
``[model]`` table.

Run: ``python examples/custom_model.py [--seconds 60] [--quick]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import attrs
import torch
from torch import nn

from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.data import generate_jets
from manifoldtrain.experiment import evaluate_checkpoint, run_experiment
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, ModelConfig, Sine, SmoothActivation
from manifoldtrain.testing import check_activation
from manifoldtrain.training import TrainConfig


@attrs.frozen
class SirenConfig(ModelConfig):
    """Linear layers of widths ``hidden`` with sine activations; ``omega`` scales the first."""

    hidden: tuple[int, ...] = attrs.field(default=(256, 256, 256), converter=tuple)
    omega: float = 2.0

    def layers(self, input_shape: tuple[int, ...], n_outputs: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for k, size in enumerate(self.hidden):
            linear = nn.Linear(width, size)
            with torch.no_grad():  # SIREN's initialisation (torch's global generator: build_model seeds it)
                bound = self.omega / width if k == 0 else math.sqrt(6 / width)
                linear.weight.uniform_(-bound, bound)
            layers += [linear, Sine()]
            width = size
        return [*layers, nn.Linear(width, n_outputs)]


class Snake(SmoothActivation):
    """:math:`v + \\sin^2 v`: its derivatives :math:`1 + \\sin 2v` and :math:`2 \\cos 2v`."""

    def derivatives(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = torch.sin(v)
        return v + s * s, 1 + torch.sin(2 * v), 2 * torch.cos(2 * v)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per network")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    if args.quick:
        cube, data, hidden, seconds = Cube(image_size=15), DataConfig(n_train=64, n_test=32), (16,), 2.0
    else:
        cube, data, hidden, seconds = Cube(), DataConfig(n_train=1000, n_test=500), (256, 256, 256), args.seconds

    train = TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, progress=False)
    fresh = generate_jets(cube, data.n_test, seed=1, progress=False)  # poses no run has seen (its data: seed 0)
    print(check_activation(Snake()))  # an AssertionError, before any training, if a derivative were wrong
    models = (("SIREN (yours)", SirenConfig(hidden=hidden)), ("MLP, Snake (yours)", MLPConfig(hidden, "custom_model:Snake")),
              ("MLP (built in)", MLPConfig(hidden=hidden)))
    with tempfile.TemporaryDirectory() as work:
        for name, model in models:
            config = ExperimentConfig(manifold=cube, data=data, model=model, train=train)
            out = f"{work}/{len(list(Path(work).iterdir()))}"
            result = run_experiment(config, out, progress=False)
            again = evaluate_checkpoint(out, fresh)  # the model rebuilt from the checkpoint: its class is named there
            print(f"{name:18s} {result['epochs']:5d} epochs  test RMSE {result['test']['rmse']:.3e}, "
                  f"on {len(fresh)} other poses {again.rmse:.3e} (the model rebuilt from its checkpoint)")


if __name__ == "__main__":
    main()
