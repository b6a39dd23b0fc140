"""Write your own manifold, get its jets from torch.func, and check it like the bundled ones.

A toy inverse problem: a point on a helix seen through a nonlinear sensor. The input is
8 smooth sensor readings, the target the 3-D position; one local coordinate (the helix
parameter) moves along the manifold.

Run: ``python examples/custom_manifold.py``
"""

from __future__ import annotations

import math

import torch

from manifoldtrain import Manifold
from manifoldtrain.testing import check_manifold


class Helix(Manifold):
    """A helix of radius 1 and pitch 0.3; points are the helix parameter in [0, 4 pi]."""

    param_dim = 1
    point_shape = (1,)
    input_shape = (8,)
    target_shape = (3,)

    def sample(self, n, generator=None, *, dtype=None, device=None):
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        return (4 * math.pi * u).to(dtype=dtype or torch.get_default_dtype(), device=device)

    def check_domain(self, points):
        if bool(((points < 0) | (points > 4 * math.pi)).any()):
            raise ValueError("points: expected helix parameters in [0, 4 pi]")

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        s = points[:, 0] + theta[:, 0]
        return torch.stack([torch.cos(s), torch.sin(s), 0.3 * s], dim=1)

    def input(self, points, theta):
        xyz = self.target(points, theta)
        sensors = torch.linspace(-1, 1, 8, dtype=xyz.dtype, device=xyz.device)
        # Each sensor sees a blurred, saturating mix of the coordinates.
        return torch.tanh(xyz[:, :1] * sensors + xyz[:, 1:2] * sensors**2 + 0.5 * xyz[:, 2:])


def main() -> None:
    helix = Helix()
    points = helix.sample(4, torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = helix.jets(points)  # the default: nested forward-mode torch.func
    print(f"input jet: value {tuple(x.value.shape)}, d1 {tuple(x.d1.shape)}, d2 {tuple(x.d2.shape)}")
    for report in check_manifold(helix, points):  # raises AssertionError on a failure
        print(report)


if __name__ == "__main__":
    main()
