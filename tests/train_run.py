"""A tiny deterministic training run, used by the kill-and-resume test (also as a subprocess)."""

import sys

import torch

from manifoldtrain.data import generate_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import Trainer, TrainConfig


def make_trainer(checkpoint_dir, epochs=6):
    torch.set_num_threads(1)
    data = generate_jets(Cube(image_size=9, extent=0.5, sigma=0.08), 96, seed=3, progress=False)
    train, test = data.split(32, seed=0)
    model = build_model(MLPConfig(hidden=(16, 16)), train.inputs.value, train.targets.value, seed=0)
    # A checkpoint every epoch (the default writes one a minute): the parent kills the run between two.
    config = TrainConfig(epochs=epochs, batch_size=16, learning_rate=3e-3, progress=False, seed=5, checkpoint_every=1)
    return Trainer(model, Objective.second_order(directions=2), train, test, config, checkpoint_dir=checkpoint_dir)


if __name__ == "__main__":
    trainer = make_trainer(sys.argv[1])
    # Slow each epoch down so that the parent can kill the run in the middle.
    original = trainer._train_epoch

    def slow_epoch(bar):
        original(bar)
        import time

        time.sleep(0.3)

    trainer._train_epoch = slow_epoch
    trainer.fit()
