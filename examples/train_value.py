"""Conventional value training on the cube, with the small conv net.

Fits N(x) ~ y only: the baseline that derivative training is compared with. The same
Trainer serves every objective; only the Objective changes.

Run: ``python examples/train_value.py [--seconds 60] [--quick]``
"""

from __future__ import annotations

import argparse

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import ConvNetConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import Trainer, TrainConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    cube, n_train, seconds = (Cube(image_size=15), 64, 2.0) if args.quick else (Cube(), args.n_train, args.seconds)

    train, test = generate_jets(cube, n_train + 500, seed=0, order=1).split(500, seed=0)
    model = build_model(ConvNetConfig(channels=(16, 32), hidden=(128,)), train.inputs.value, train.targets.value)
    config = TrainConfig(epochs=10**6, time_budget=seconds, batch_size=64)
    history = Trainer(model, Objective.value(), train, test, config).fit()
    test_metrics = history.last_test
    print(f"value training, {n_train} samples, {history.records[-1]['epoch']} epochs: "
          f"test RMSE {test_metrics['rmse']:.3e} (first derivatives {test_metrics['rmse_d1']:.3e}, never trained)")
    with torch.no_grad():
        print("first test sample, predicted corners:", model(test.inputs.value[:1])[0].tolist())


if __name__ == "__main__":
    main()
