"""Plug-ins that break their contract, as a user's might (issue 25, item 3)."""

import math

import torch
from torch import nn

from manifoldtrain import Jet
from manifoldtrain.data import generate_jets
from manifoldtrain.data.sources import DataSource
from manifoldtrain.nn import ModelConfig, SmoothActivation
from manifoldtrain.objectives import ValueTerm
from toy_manifolds import Blob


class WrongTarget(Blob):
    """Declares three target coordinates, gives two."""

    target_shape = (3,)


class WrongCoords(Blob):
    """Its jets have three coordinate rows for param_dim 2."""

    def jets(self, points, order=2):
        x, y = super().jets(points, order)
        if order == 0:
            return x, y
        return Jet(x.value, torch.cat([x.d1, x.d1[:, :1]], 1), *([x.d2] if order == 2 else [])), y


class OneOutput(ModelConfig):
    """A network of one output whatever n_outputs."""

    def layers(self, input_shape, n_outputs):
        return [nn.Flatten(), nn.Linear(math.prod(input_shape), 4), nn.Tanh(), nn.Linear(4, 1)]


class FixedInput(ModelConfig):
    """A network for 50 inputs whatever input_shape."""

    def layers(self, input_shape, n_outputs):
        return [nn.Flatten(), nn.Linear(50, 4), nn.Tanh(), nn.Linear(4, n_outputs)]


class WrongTanh(SmoothActivation):
    """tanh with the sign of its second derivative wrong."""

    def derivatives(self, v):
        t = torch.tanh(v)
        d = 1 - t * t
        return t, d, 2 * t * d


class VectorTerm(ValueTerm):
    """A value term that forgets to reduce its loss."""

    def loss(self, batch, rows):
        return (batch.value - batch.targets.value) ** 2


class OneTargetSource(DataSource):
    """A user's source whose batches hold one target coordinate of the manifold's two."""

    def __init__(self, data):
        self.data = data

    @classmethod
    def from_config(cls, config, *, order, dtype):
        return cls(generate_jets(config.manifold, config.data.n_train, order=order, dtype=dtype, progress=False))

    def __len__(self):
        return len(self.data)

    @property
    def order(self):
        return self.data.inputs.order

    def batch(self, indices, epoch, order=None):
        x, y = self.data.inputs, self.data.targets
        return (Jet(*(c[indices] for c in x.components())),
                Jet(*(c[indices][..., :1] for c in y.components())))

    def description(self):
        return {"kind": "one-target", "n": len(self.data)}


def full_disk_open(real_open):
    """An ``open`` like ``real_open`` whose files opened for writing ``.npy`` arrays (the shards)
    fail every write with ENOSPC, as on a full disk."""
    import errno

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "w" in mode and str(path).endswith(".npy") else f

    return full_open
