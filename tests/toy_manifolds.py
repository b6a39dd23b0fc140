"""Small manifolds written only against the public interface, as a user would."""

import math

import torch

from manifoldtrain import Jet, Manifold


class Sphere(Manifold):
    """Points on the unit sphere (as angles); input is a 5-vector of smooth features, target the 3-D point.

    Uses the default torch.func jets.
    """

    param_dim = 2
    point_shape = (2,)

    def __repr__(self):
        return f"{type(self).__name__}()"

    input_shape = (5,)
    target_shape = (3,)

    def sample(self, n, generator=None, *, dtype=None, device=None):
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        points = torch.stack([0.2 + 2.7 * u[:, 0], 2 * math.pi * u[:, 1]], dim=1)
        return points.to(dtype=dtype, device=device)

    def check_domain(self, points):
        if bool(((points[:, 0] <= 0) | (points[:, 0] >= math.pi)).any()):
            raise ValueError("points: expected polar angle in (0, pi)")

    def _xyz(self, points, theta):
        pol, az = points[:, 0] + theta[:, 0], points[:, 1] + theta[:, 1]
        return torch.stack([torch.sin(pol) * torch.cos(az), torch.sin(pol) * torch.sin(az), torch.cos(pol)], dim=1)

    def input(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        p = self._xyz(points, theta)
        return torch.cat([p, (p[:, :1] * p[:, 1:2]), torch.tanh(p[:, 2:] * 2.0)], dim=1)

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        return self._xyz(points, theta)


class WrongSphere(Sphere):
    """Sphere with an analytic override whose second derivative is off by a little: the checks must catch it."""

    def jets(self, points, order=2):
        x, y = Manifold.default_jets(self, points, order)
        if order < 2:
            return x, y
        return Jet(x.value, x.d1, x.d2 * 1.001), y


class AnalyticSphere(Sphere):
    """Sphere with a correct analytic target jet (input jets from the default)."""

    def jets(self, points, order=2):
        x, _ = Manifold.default_jets(self, points, order)
        self.check_points(points)
        pol, az = points[:, 0], points[:, 1]
        sp, cp, sa, ca = torch.sin(pol), torch.cos(pol), torch.sin(az), torch.cos(az)
        value = torch.stack([sp * ca, sp * sa, cp], dim=1)
        if order == 0:
            return x, Jet(value)
        d_pol = torch.stack([cp * ca, cp * sa, -sp], dim=1)
        d_az = torch.stack([-sp * sa, sp * ca, torch.zeros_like(sp)], dim=1)
        d1 = torch.stack([d_pol, d_az], dim=1)
        if order == 1:
            return x, Jet(value, d1)
        d_pp = torch.stack([-sp * ca, -sp * sa, -cp], dim=1)
        d_pa = torch.stack([-cp * sa, cp * ca, torch.zeros_like(sp)], dim=1)
        d_aa = torch.stack([-sp * ca, -sp * sa, torch.zeros_like(sp)], dim=1)
        return x, Jet(value, d1, torch.stack([d_pp, d_pa, d_aa], dim=1))


class ScaledSphere(Sphere):
    """Sphere whose local coordinates are in units of ``scale`` radians (as when the units of
    theta are chosen to balance the jets): the chart is no translation of the point, so it
    overrides ``move``."""

    scale = 0.5

    def _xyz(self, points, theta):
        return super()._xyz(points, self.scale * theta)

    def move(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta, finite=True)
        return points + self.scale * theta


class WrongMoveSphere(ScaledSphere):
    """ScaledSphere that keeps the default ``move`` (points + theta), wrong for its chart:
    ``check_move`` must catch it."""

    move = Manifold.move


class TorusWinding(Manifold):
    """A winding line on a torus: points are two angles, one local coordinate moves along the
    line. ``point_shape != (param_dim,)`` and ``move`` is not overridden, so the default raises
    ``NotImplementedError`` and ``check_move`` reports itself skipped."""

    param_dim = 1
    point_shape = (2,)
    input_shape = (4,)
    target_shape = (3,)
    slope = 2.0

    def __repr__(self):
        return f"{type(self).__name__}()"

    def sample(self, n, generator=None, *, dtype=None, device=None):
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return (2 * math.pi * u).to(dtype=dtype or torch.get_default_dtype(), device=device)

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        phi, psi = points[:, 0] + theta[:, 0], points[:, 1] + self.slope * theta[:, 0]
        ring = 1.0 + 0.4 * torch.cos(psi)
        return torch.stack([ring * torch.cos(phi), ring * torch.sin(phi), 0.4 * torch.sin(psi)], dim=1)

    def input(self, points, theta):
        xyz = self.target(points, theta)
        return torch.cat([torch.tanh(xyz), (xyz * xyz).sum(1, keepdim=True)], dim=1)


class Blob(Manifold):
    """A Gaussian blob at a point of the plane, imaged on a grid; the target is the point itself.

    The target is *linear* in the coordinates (``y(p, theta) = p + theta``): its second
    derivatives vanish, the degenerate case of the second-order term's normaliser.
    """

    param_dim, point_shape, target_shape = 2, (2,), (2,)

    def __init__(self, size=9, width=0.25):
        self.size, self.width = size, width

    @property
    def input_shape(self):
        return (self.size, self.size)

    def __repr__(self):
        return f"Blob(size={self.size}, width={self.width})"

    def sample(self, n, generator=None, *, dtype=None, device=None):
        return (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5).to(dtype=dtype or torch.float64, device=device)

    def input(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        c = points + theta
        grid = torch.linspace(-1, 1, self.size, dtype=points.dtype, device=points.device)
        gx = grid.reshape(1, 1, -1) - c[:, :1, None]
        gy = grid.reshape(1, -1, 1) - c[:, 1:, None]
        return torch.exp(-(gx * gx + gy * gy) / (2 * self.width**2))

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        return points + theta


import attrs  # noqa: E402


@attrs.frozen
class SettingsSphere(Sphere):
    """The sphere as an attrs class (no settings), so that configs and checkpoints can name it."""


@attrs.frozen
class BlobFrames(Manifold):
    """Two frames ``[2, size, size]`` of a blob moving in the plane, as a user's pendulum rendered
    at two moments: multi-channel inputs. The point is ``(x, y, vx, vy)``: frame 0 shows the blob at
    ``(x, y)``, frame 1 at ``(x + vx, y + vy)``; the target is the point, with names of its own."""

    size: int = 9
    width: float = 0.3

    param_dim, point_shape, target_shape = 4, (4,), (4,)
    target_names = ("x", "y", "vx", "vy")

    @property
    def input_shape(self):
        return (2, self.size, self.size)

    def sample(self, n, generator=None, *, dtype=None, device=None):
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64) - 0.5
        u[:, 2:] *= 0.4
        return u.to(dtype=dtype or torch.float64, device=device)

    def _frame(self, c, grid):
        gx = grid.reshape(1, 1, -1) - c[:, :1, None]
        gy = grid.reshape(1, -1, 1) - c[:, 1:, None]
        return torch.exp(-(gx * gx + gy * gy) / (2 * self.width**2))

    def input(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        p = points + theta
        grid = torch.linspace(-1, 1, self.size, dtype=points.dtype, device=points.device)
        return torch.stack([self._frame(p[:, :2], grid), self._frame(p[:, :2] + p[:, 2:], grid)], dim=1)

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        return points + theta


@attrs.frozen
class TwoNamesSphere(SettingsSphere):
    """The sphere (3 target outputs) naming two of them only: its runs are refused before any work."""

    target_names = ("x", "y")
