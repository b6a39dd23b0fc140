"""The cube manifold of Avrutskiy (arXiv 2310.14045): a blurred, flat-shaded cube and its pose."""

from __future__ import annotations

import math
import os
import warnings

import attrs
import numpy as np
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.jet import Jet, num_pairs, triu_pairs
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import _gaussian as G
from manifoldtrain.manifolds._rotation import axis_rotation, generators, rotation_matrix, rotation_vector

__all__ = ["Cube"]

# Faces of the unit cube (corner coordinates in units of the half size), each listed in the
# order of the definition (docs/cube.rst); face i (0-based) has colour (i + 1) / 6 by default.
_FACES = (
    ((1, -1, -1), (1, 1, -1), (1, 1, 1), (1, -1, 1)),
    ((-1, -1, 1), (-1, 1, 1), (-1, 1, -1), (-1, -1, -1)),
    ((-1, -1, -1), (-1, 1, -1), (1, 1, -1), (1, -1, -1)),
    ((1, -1, 1), (1, 1, 1), (-1, 1, 1), (-1, -1, 1)),
    ((1, -1, 1), (-1, -1, 1), (-1, -1, -1), (1, -1, -1)),
    ((-1, 1, 1), (1, 1, 1), (1, 1, -1), (-1, 1, -1)),
)
_CORNERS = tuple(dict.fromkeys(c for face in _FACES for c in face))  # 8 corners, first-seen order
_FACE_INDEX = tuple(tuple(_CORNERS.index(c) for c in face) for face in _FACES)
_TARGET_INDEX = _FACE_INDEX[3][:3]  # first three corners of face 4


def _edges_and_incidence() -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """The 12 undirected edges (as first traversed) and their signed face incidence ``[12, 6]``."""
    edges: list[tuple[int, int]] = []
    for face in _FACE_INDEX:
        for k in range(4):
            a, b = face[k], face[(k + 1) % 4]
            if (a, b) not in edges and (b, a) not in edges:
                edges.append((a, b))
    inc = np.zeros((len(edges), len(_FACE_INDEX)))
    for f, face in enumerate(_FACE_INDEX):
        for k in range(4):
            a, b = face[k], face[(k + 1) % 4]
            if (a, b) in edges:
                inc[edges.index((a, b)), f] += 1
            else:
                inc[edges.index((b, a)), f] -= 1
    return tuple(edges), inc


_EDGES, _INCIDENCE = _edges_and_incidence()
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_TWO_PI = 2.0 * math.pi


@attrs.frozen(eq=False)
class _EdgeField:
    """Directed edges ``a -> b`` (sigma units) against the pixels: per edge ``[n, E, ...]``,
    per (edge, pixel) ``[n, E, P]``."""

    a: torch.Tensor
    b: torch.Tensor
    dvec: torch.Tensor
    length: torch.Tensor
    h: torch.Tensor
    ka: torch.Tensor
    kb: torch.Tensor
    erf_h: torch.Tensor
    erf_a: torch.Tensor
    erf_b: torch.Tensor


def _tuple_of_floats(length: int):
    def convert(value):
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"expected a sequence of {length} numbers, got {type(value).__name__}") from None
        return items

    def validate(instance, attribute, value):
        if len(value) != length:
            raise ValueError(f"{attribute.name}: expected {length} numbers, got {len(value)}")
        for i, v in enumerate(value):
            check_float(f"{attribute.name}[{i}]", v)

    return convert, validate


_colors_convert, _colors_validate = _tuple_of_floats(6)
_angles_convert, _angles_validate = _tuple_of_floats(3)


def _band_terms(
    ax_: torch.Tensor, ay_: torch.Tensor, h: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor, length: torch.Tensor,
    w: torch.Tensor, floor: torch.Tensor, nb: int, *, compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-(edge, pixel) work of :meth:`Cube._render_chunk` on the pairs of a pixel and an
    edge that it is near, ``[B]`` each: ``A = (ax_, ay_) = a - q``, ``h = A x t``,
    ``k_a = A . t``, ``k_b = k_a + length``, the edge's ``length`` and weight ``w``. Returns the
    value's band terms times ``w`` (``edge_far`` without its angle) and the basis ``[nb', B]``
    of the derivatives (``nb`` 0, 2 or 10; ``K_0..K_3``, then for 10 ``A_x K_0..A_x K_2,
    A_y K_0..A_y K_2``), the exponents of the moments clamped at ``floor`` (a 0-d tensor).

    ``compiled``: written for ``torch.compile`` (no data-dependent branches, no in-place
    writes; every edge at least ``SHORT_EDGE`` long); otherwise for eager mode.
    """
    erf_h, erf_a, erf_b = torch.erf(h * _INV_SQRT2), torch.erf(ka * _INV_SQRT2), torch.erf(kb * _INV_SQRT2)
    value = G.edge_bands(h, ka, kb, erf_h, erf_a, erf_b) * w
    if nb == 0:
        return value, None
    h2 = h * h
    exp_h = torch.exp((-0.5 * h2).clamp_min(floor))
    phi_a = torch.exp((-0.5 * (h2 + ka * ka)).clamp_min(floor)) * (1.0 / _TWO_PI)  # |a - q|^2 = h^2 + k_a^2
    phi_b = torch.exp((-0.5 * (h2 + kb * kb)).clamp_min(floor)) * (1.0 / _TWO_PI)
    if compiled:
        k = G.edge_moments(ka, length, exp_h, erf_a, erf_b, phi_a, phi_b, short_edges=False)
        if nb == 10:
            k = k + (ax_ * k[0], ax_ * k[1], ax_ * k[2], ay_ * k[0], ay_ * k[1], ay_ * k[2])
        return value, torch.stack(k)
    basis = torch.empty(max(nb, 4), *h.shape, dtype=h.dtype, device=h.device)
    G.edge_moments(ka, length, exp_h, erf_a, erf_b, phi_a, phi_b, out=basis[:4].unbind(0))
    if nb == 10:
        for k in range(3):
            torch.mul(ax_, basis[k], out=basis[4 + k])
            torch.mul(ay_, basis[k], out=basis[7 + k])
    return value, basis


#: ``torch.compile`` of the renderer's elementwise kernels: off unless the environment variable
#: ``MANIFOLDTRAIN_CUBE_COMPILE`` is ``1`` (see :meth:`Cube.jets`); turned off for the rest of the
#: process, with a warning, if compiling fails.
_COMPILE_STATE: dict[str, object] = {"failed": False}


def _compile_enabled(x: torch.Tensor) -> bool:
    """Compile the kernels for ``x``: only float32 on the CPU, where it helps (float64: not)."""
    return (
        os.environ.get("MANIFOLDTRAIN_CUBE_COMPILE", "0") == "1"
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not _COMPILE_STATE["failed"]
    )


def _band_terms_fused(*args):
    """:func:`_band_terms` written for ``torch.compile``."""
    return _band_terms(*args, compiled=True)


def _compiled(name: str, fn, eager=None):
    """``fn`` compiled (``dynamic=True``, compiled once per process and dtype), or a wrapper
    that falls back to ``eager`` (default ``fn``; for good, with a warning) if compiling or
    running it fails."""
    if name not in _COMPILE_STATE:
        compiled = torch.compile(fn, dynamic=True)
        eager = fn if eager is None else eager

        def run(*args, **kwargs):
            if not _COMPILE_STATE["failed"]:
                try:
                    return compiled(*args, **kwargs)
                except Exception as exc:  # no compiler, unsupported backend, ...
                    _COMPILE_STATE["failed"] = True
                    warnings.warn(f"Cube: torch.compile failed, rendering in eager mode ({type(exc).__name__}: {exc})",
                                  RuntimeWarning, stacklevel=2)
            return eager(*args, **kwargs)

        _COMPILE_STATE[name] = run
    return _COMPILE_STATE[name]


def _edge_ends(t: torch.Tensor, idx: torch.Tensor, sigma: float) -> torch.Tensor:
    """The corners ``idx`` ``[n, E]`` of corner jets ``t`` ``[n, ..., 8, 2]``: ``[n, E, ..., 2]``,
    in units of ``sigma``."""
    if t.dim() == 3:
        return t.gather(1, idx[..., None].expand(-1, -1, 2)) / sigma
    m = t.shape[1]
    g = t.gather(2, idx[:, None, :, None].expand(-1, m, -1, 2))
    return g.transpose(1, 2) / sigma


#: The largest length setting of a :class:`Cube` (``extent``, ``sigma``, ``focal_length``,
#: ``camera_distance``, ``half_size``): the cube is 0.4 across by default, and a million times
#: that is no scene; a huge value would overflow the projection instead of failing clearly.
MAX_LENGTH = 1e6


@attrs.frozen(eq=True)
class Cube(Manifold):
    """The paper's cube: a Gaussian-blurred image of a flat-shaded cube, and its corners.

    ``Cube()`` is exactly the paper's "CubeDiff" manifold, defined in full in the docs (*The cube
    renderer*, ``docs/cube.rst``). A point is a pose ``[6]`` = (rotation vector ``w`` in
    radians, translation ``t``); the local coordinates ``theta = (x, y, z, a, b, c)`` move the
    posed corners as

    .. math::
        V(\\theta) = (V_\\text{base} R(w))\\, R_x(a) R_y(b) R_z(c) + t + (x, y, z)

    (row vectors; :math:`R_\\cdot` act on column vectors). The input is the image
    ``[image_size, image_size]``: every visible face's colour times the integral of a 2-D
    Gaussian of standard deviation ``sigma`` centred on the pixel over the projected face,
    computed in closed form (Owen's T, see :mod:`manifoldtrain.manifolds._gaussian`), never
    by supersampling. The target ``[9]`` is the 3-D position of the first three corners of
    face 4 under :math:`V(\\theta)`.

    :meth:`jets` is analytic: the derivatives of the image are the Gaussian's moments along
    the moving edges (closed forms in ``erf`` and ``exp``), exact derivatives of the same
    function that :meth:`input` evaluates, in float32 or float64, on any device.

    Parameters
    ----------
    image_size : int
        Pixels per side (default 41). Pixel ``(r, c)`` sits at
        ``x = -extent + c h``, ``y = extent - r h``, ``h = 2 extent / (image_size - 1)``.
    extent : float
        Half-width of the image in image-plane units (default 1.0).
    sigma : float
        Standard deviation of the blur in image-plane units (default 0.03). Under a twentieth
        of a pixel the image's derivatives vanish between edges, wider than the image the image
        is nearly uniform: either warns (``UserWarning``). The lengths (``extent``, ``sigma``,
        ``focal_length``, ``camera_distance``, ``half_size``) are at most :data:`MAX_LENGTH`.
    focal_length, camera_distance : float
        Projection ``(u, v) = f (X, Y) / (Z - D)`` with ``f = focal_length`` (default 5) and
        ``D = camera_distance`` (default 5); the picture is mirrored, by definition.
    half_size : float
        Half the edge length of the cube (default 0.2: corners at ``+-1/5``).
    face_colors : tuple of float
        Six numbers: the colour of faces 1..6 (default ``i/6``).
    base_angles : tuple of float
        Three angles, the base orientation: corners are multiplied (row vectors) by
        ``Rz(base_angles[0])``, then ``Rx(base_angles[1])``, then ``Ry(base_angles[2])``
        (default ``(pi/2, pi/4, 0.6154797)``, the cube corner-on).
    max_angle : float
        Sampling: rotation angle uniform in ``[-max_angle, max_angle]`` about an axis uniform
        on the sphere (default ``pi/8``), radians, in ``[0, pi]``.
    translation_radius : float
        Sampling: translation uniform in the ball of this radius (default 0.52).
    near_clip : float
        Valid points keep every corner at least this far in front of the camera,
        ``D - Z >= near_clip`` (default 0.5).

    Raises
    ------
    TypeError, ValueError
        A setting of the wrong type or range, naming it; and settings under which sampled
        poses could reach the camera, ``camera_distance < sqrt(3) half_size +
        translation_radius + near_clip`` (a cube behind or through the camera), naming
        ``camera_distance, half_size, translation_radius, near_clip``.

    Examples
    --------
    >>> import torch
    >>> cube = Cube()
    >>> points = cube.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> image, target = cube.jets(points)
    >>> image.value.shape, image.d1.shape, image.d2.shape, target.d2.shape
    (torch.Size([2, 41, 41]), torch.Size([2, 6, 41, 41]), torch.Size([2, 21, 41, 41]), torch.Size([2, 21, 9]))
    """

    image_size: int = attrs.field(default=41, validator=attrs_validator(check_int, minimum=2, maximum=4096))
    extent: float = attrs.field(default=1.0, validator=attrs_validator(check_float, positive=True, maximum=MAX_LENGTH))
    sigma: float = attrs.field(default=0.03, validator=attrs_validator(check_float, positive=True, maximum=MAX_LENGTH))
    focal_length: float = attrs.field(default=5.0, validator=attrs_validator(check_float, positive=True, maximum=MAX_LENGTH))
    camera_distance: float = attrs.field(default=5.0, validator=attrs_validator(check_float, positive=True, maximum=MAX_LENGTH))
    half_size: float = attrs.field(default=0.2, validator=attrs_validator(check_float, positive=True, maximum=MAX_LENGTH))
    face_colors: tuple[float, ...] = attrs.field(
        default=tuple((i + 1) / 6 for i in range(6)), converter=_colors_convert, validator=_colors_validate
    )
    base_angles: tuple[float, float, float] = attrs.field(
        default=(math.pi / 2, math.pi / 4, 0.6154797), converter=_angles_convert, validator=_angles_validate
    )
    max_angle: float = attrs.field(
        default=math.pi / 8, validator=attrs_validator(check_float, nonnegative=True, maximum=math.pi)
    )
    translation_radius: float = attrs.field(default=0.52, validator=attrs_validator(check_float, nonnegative=True))
    near_clip: float = attrs.field(default=0.5, validator=attrs_validator(check_float, positive=True))

    param_dim = 6
    point_shape = (6,)
    target_shape = (9,)
    coordinate_names = ("x", "y", "z", "a", "b", "c")
    #: The target's outputs: x, y, z of corners 1-3 of face 4.
    target_names = tuple(f"corner{k}_{axis}" for k in (1, 2, 3) for axis in "xyz")

    def __attrs_post_init__(self) -> None:
        pixel = 2 * self.extent / (self.image_size - 1)
        if self.sigma < 0.05 * pixel:
            warnings.warn(f"sigma: {self.sigma:g} is under a twentieth of a pixel ({pixel:g}): the edges are sharp "
                          "steps between pixel centres, so the image's derivatives vanish almost everywhere; take "
                          "sigma about half a pixel or more", UserWarning, stacklevel=3)
        if self.sigma > 2 * self.extent:
            warnings.warn(f"sigma: {self.sigma:g} is wider than the whole image (2 extent = {2 * self.extent:g}): the "
                          "blur spreads each face over it and the image is nearly uniform; take sigma about a pixel",
                          UserWarning, stacklevel=3)
        # Every corner of every pose that sample() draws must lie near_clip in front of the
        # camera. A corner is sqrt(3) half_size from the cube's centre, the centre at most
        # translation_radius from the origin: that bound (reached when a corner points at the
        # camera, as in the base orientation) must stay near_clip short of camera_distance.
        reach = math.sqrt(3.0) * self.half_size + self.translation_radius
        if self.camera_distance - reach < self.near_clip:
            raise ValueError(
                f"camera_distance, half_size, translation_radius, near_clip: sampled poses reach Z = "
                f"sqrt(3) * half_size + translation_radius = {reach:.6g}, but the camera sits at "
                f"camera_distance = {self.camera_distance:.6g} and every corner must stay near_clip = "
                f"{self.near_clip:.6g} in front of it, which needs camera_distance >= {reach + self.near_clip:.6g}: "
                "increase camera_distance, or reduce half_size, translation_radius or near_clip"
            )

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def pixel_size(self) -> float:
        """Distance between neighbouring pixel centres, ``2 extent / (image_size - 1)``."""
        return 2.0 * self.extent / (self.image_size - 1)

    # ------------------------------------------------------------------ constants

    def base_corners(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """``[8, 3]``: the corners in the base orientation (before the pose), row vectors."""
        corners = torch.tensor(_CORNERS, dtype=torch.float64) * self.half_size
        for axis, angle in zip((2, 0, 1), self.base_angles):
            corners = corners @ axis_rotation(axis, torch.tensor(angle, dtype=torch.float64))
        return corners.to(dtype=dtype, device=device)

    def pixel_grid(self, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel centres ``(x, y)``, each ``[image_size, image_size]`` (row 0 at the top)."""
        idx = torch.arange(self.image_size, dtype=torch.float64)
        x = -self.extent + idx * self.pixel_size
        y = self.extent - idx * self.pixel_size
        return (
            x.expand(self.image_size, -1).to(dtype=dtype, device=device),
            y[:, None].expand(-1, self.image_size).to(dtype=dtype, device=device),
        )

    # ------------------------------------------------------------------ sampling, checks

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` poses ``[n, 6]`` from the distribution of the paper's data set (``docs/cube.rst``).

        Rotation: axis uniform on the unit sphere, angle uniform in
        ``[-max_angle, max_angle]``. Translation: ``translation_radius`` times a point uniform
        in the unit ball. Drawn in float64 on the generator's device, then cast.
        """
        dtype, gdev = self.check_sample_arguments(n, generator, dtype)
        kw = dict(generator=generator, dtype=torch.float64, device=gdev)
        axis = torch.randn(n, 3, **kw)
        axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-300)
        angle = (2.0 * torch.rand(n, 1, **kw) - 1.0) * self.max_angle
        direction = torch.randn(n, 3, **kw)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
        radius = self.translation_radius * torch.rand(n, 1, **kw) ** (1.0 / 3.0)
        points = torch.cat([axis * angle, direction * radius], dim=1)
        return points.to(dtype=dtype, device=device if device is not None else gdev)

    def check_domain(self, points: torch.Tensor) -> None:
        """Every corner of the posed cube must lie ``near_clip`` in front of the camera."""
        corners = self._posed_corners(points)
        depth = self.camera_distance - corners[..., 2].amax(dim=-1)
        bad = depth < self.near_clip
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"points: expected poses with every corner at least near_clip={self.near_clip} in front of "
                f"the camera (Z <= {self.camera_distance - self.near_clip}); rows {rows} are not"
            )

    def move(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The poses that local coordinates ``theta`` reach from ``points``: the chart re-centred.

        ``input(move(p, theta), 0) == input(p, theta)`` (and the same for the target). The new
        rotation is :math:`R(w) R_x(a) R_y(b) R_z(c)` written as a rotation vector (angle in
        ``[0, pi]``), the new translation :math:`t + (x, y, z)`. Differentiable in ``points``
        and ``theta`` (autograd and ``torch.func``, float32 and float64), at ``theta = 0`` and
        at the identity rotation too.

        Parameters
        ----------
        points : Tensor
            ``[n, 6]`` poses, float32 or float64.
        theta : Tensor
            ``[n, 6]`` local coordinates ``(x, y, z, a, b, c)``, finite, with the dtype and
            device of ``points``.

        Returns
        -------
        Tensor
            ``[n, 6]`` poses, dtype and device of ``points``. Not checked against the near
            clip: a large ``theta`` may leave the valid range, which :meth:`input` reports.

        Raises
        ------
        TypeError, ValueError
            Bad ``points`` or ``theta`` (NaN or inf in ``theta`` is a ``ValueError``).
        """
        self.check_points(points)
        self.check_theta(points, theta, finite=True)
        local = axis_rotation(0, theta[:, 3]) @ axis_rotation(1, theta[:, 4]) @ axis_rotation(2, theta[:, 5])
        w = rotation_vector(rotation_matrix(points[:, :3]) @ local)
        return torch.cat([w, points[:, 3:] + theta[:, :3]], dim=1)

    def _posed_corners(self, points: torch.Tensor) -> torch.Tensor:
        """``[n, 8, 3]``: corners under the pose, ``V_base R(w) + t``."""
        base = self.base_corners(points.dtype, points.device)
        return base @ rotation_matrix(points[:, :3]) + points[:, None, 3:]

    # ------------------------------------------------------------------ the chart (straightforward)

    def _corners(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``[n, 8, 3]``: corners at local coordinates ``theta``, differentiable in ``theta``."""
        base = self.base_corners(points.dtype, points.device)
        local = axis_rotation(0, theta[:, 3]) @ axis_rotation(1, theta[:, 4]) @ axis_rotation(2, theta[:, 5])
        return (base @ rotation_matrix(points[:, :3])) @ local + (points[:, 3:] + theta[:, :3])[:, None, :]

    def _project(self, corners: torch.Tensor) -> torch.Tensor:
        """``[..., 3] -> [..., 2]``: ``f (X, Y) / (Z - D)``."""
        return self.focal_length * corners[..., :2] / (corners[..., 2:] - self.camera_distance)

    def input(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The image ``[n, image_size, image_size]`` at local coordinates ``theta`` ``[n, 6]``.

        Exact (closed form; Owen's T by quadrature at float64 round-off, evaluated only where
        it exceeds 2e-17). Written with ``torch`` operations that ``torch.func`` transforms, so
        it can be differentiated any number of times; :meth:`jets` gives the same derivatives
        analytically and faster, :meth:`reference_input` the same values the slow, obvious way.
        """
        self.check_points(points)
        self.check_theta(points, theta)
        uv = self._project(self._corners(points, theta))
        edges = torch.tensor(_EDGES, device=points.device)
        a, b = uv[:, edges[:, 0]] / self.sigma, uv[:, edges[:, 1]] / self.sigma
        field = self._edge_field(a, b)
        return self._render_value(field, self._edge_weights(uv.detach()), compact=False)

    def reference_input(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """:meth:`input` evaluated the straightforward way, for tests: slow, obviously right.

        Every edge of every visible face against every pixel, the triangle integral with its
        quadrature everywhere, the faces summed one by one.
        """
        self.check_points(points)
        self.check_theta(points, theta)
        uv = self._project(self._corners(points, theta))  # [n, 8, 2]
        poly = uv[:, torch.tensor(_FACE_INDEX, device=points.device)]  # [n, 6, 4, 2]
        nxt = poly.roll(-1, dims=2)
        weight = self._face_weights(uv.detach())  # [n, 6]
        gx, gy = self.pixel_grid(points.dtype, points.device)
        q = torch.stack([gx.flatten(), gy.flatten()], dim=-1)  # [P, 2]
        a = (poly[:, :, :, None, :] - q) / self.sigma  # [n, 6, 4, P, 2]
        b = (nxt[:, :, :, None, :] - q) / self.sigma
        tri = G.triangle_integral(a, b)  # [n, 6, 4, P]
        image = (weight[:, :, None] * tri.sum(2)).sum(1)
        return image.reshape(image.shape[0], self.image_size, self.image_size)

    def _face_weights(self, uv: torch.Tensor) -> torch.Tensor:
        """``[n, 6]``: each face's colour if it is visible (counter-clockwise on screen), else 0."""
        poly = uv[:, torch.tensor(_FACE_INDEX, device=uv.device)]
        nxt = poly.roll(-1, dims=2)
        shoelace = ((nxt[..., 0] - poly[..., 0]) * (nxt[..., 1] + poly[..., 1])).sum(-1)
        colors = torch.tensor(self.face_colors, dtype=uv.dtype, device=uv.device)
        return torch.where(shoelace < 0, colors, torch.zeros_like(colors))

    def _edge_weights(self, uv: torch.Tensor) -> torch.Tensor:
        """``[n, 12]``: weight of each edge ``a -> b`` = sum of +-colour of the visible faces along it."""
        inc = torch.tensor(_INCIDENCE, dtype=uv.dtype, device=uv.device)
        return self._face_weights(uv) @ inc.T

    def _edge_field(self, a: torch.Tensor, b: torch.Tensor) -> _EdgeField:
        """Everything about directed edges ``a -> b`` (``[n, E, 2]``, sigma units) and the pixels
        that both the value and the derivatives need."""
        gx, gy = self.pixel_grid(a.dtype, a.device)
        qx, qy = gx[0] / self.sigma, gy[:, 0] / self.sigma  # columns, rows [S]
        dvec = b - a
        length = torch.sqrt((dvec * dvec).sum(-1))
        length = torch.where(length > 0, length, torch.ones_like(length))
        tx, ty = dvec[..., 0] / length, dvec[..., 1] / length  # [n, E]
        ax_, ay_ = a[..., 0:1] - qx, a[..., 1:2] - qy  # [n, E, S]: per column, per row
        # h = A x t and k_a = A . t are sums of a row term and a column term.
        h = (ax_ * ty[..., None])[..., None, :] - (ay_ * tx[..., None])[..., :, None]  # [n, E, S, S]
        ka = (ax_ * tx[..., None])[..., None, :] + (ay_ * ty[..., None])[..., :, None]
        h, ka = h.flatten(-2), ka.flatten(-2)  # [n, E, P], row-major pixels
        kb = ka + length[..., None]
        return _EdgeField(
            a=a, b=b, dvec=dvec, length=length, h=h, ka=ka, kb=kb,
            erf_h=torch.erf(h * _INV_SQRT2), erf_a=torch.erf(ka * _INV_SQRT2), erf_b=torch.erf(kb * _INV_SQRT2),
        )

    def _render_value(self, field: _EdgeField, w: torch.Tensor, *, compact: bool) -> torch.Tensor:
        """Image ``[n, S, S]`` of the weighted edges of ``field`` (weights ``w`` ``[n, E]``): the
        closed-form far part on every pixel plus the Owen's T part near the corners (see
        :meth:`_add_near_terms` for ``compact``)."""
        S = self.image_size
        f = field
        far = G.edge_far(f.h, f.ka, f.kb, f.length[..., None], f.erf_h, f.erf_a, f.erf_b)
        far = (far * w[..., None]).sum(1)  # [n, P]
        flat = torch.cat([far, far.new_zeros(far.shape[0], 1)], dim=1)
        flat = self._add_near_terms(flat, f, w, compact=compact)
        return flat[:, : S * S].reshape(flat.shape[0], S, S)

    def target(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Corners 1-3 of face 4 at local coordinates ``theta``: ``[n, 9]`` (x, y, z per corner)."""
        self.check_points(points)
        self.check_theta(points, theta)
        return self._corners(points, theta)[:, list(_TARGET_INDEX)].reshape(-1, 9)

    # ------------------------------------------------------------------ analytic jets (fast path)

    def jets(self, points: torch.Tensor, order: int = 2, *, chunk_size: int = 32) -> tuple[Jet, Jet]:
        """Exact jets of the image and the target at ``theta = 0`` (analytic, fast).

        The closed forms are evaluated only on the pixels near some visible edge (within
        9.5 sigma in float64, 7.1 in float32, where every term dropped elsewhere is below
        2^-60, resp. 2^-31, of its scale; see :meth:`_band_radius`): the same function as the
        evaluation on every pixel (``_dense_jets``), to rounding, 3 to 3.5 times faster.

        With the environment variable ``MANIFOLDTRAIN_CUBE_COMPILE=1`` the elementwise kernels
        of float32 renders on the CPU are fused by ``torch.compile`` (1.1 to 1.4 times faster
        again, after a one-off compilation of 5-20 s per process; float64 gains nothing from
        it). Off by default; if compiling fails, rendering goes on in eager mode with a warning.

        Parameters
        ----------
        points : Tensor
            ``[n, 6]`` poses, float32 or float64, any device.
        order : int
            0, 1 or 2.
        chunk_size : int
            Samples rendered at once (bounds the temporaries; default 32, the fastest on a
            CPU).

        Returns
        -------
        image_jet : Jet
            ``value [n, S, S]``, ``d1 [n, 6, S, S]``, ``d2 [n, 21, S, S]``, ``S = image_size``.
        target_jet : Jet
            ``value [n, 9]``, ``d1 [n, 6, 9]``, ``d2 [n, 21, 9]``.
        """
        self.check_points(points)
        check_int("order", order, minimum=0, maximum=2)
        check_int("chunk_size", chunk_size, minimum=1)
        n, S, d = points.shape[0], self.image_size, self.param_dim
        if n == 0:
            shapes = [(), (d,), (num_pairs(d),)][: order + 1]
            images = [points.new_empty(0, *s, S, S) for s in shapes]
            return Jet(*images), Jet(*(points.new_empty(0, *s, 9) for s in shapes))
        images, targets = self._fast_jets(points, order, chunk_size)
        return Jet(*images), Jet(*targets)

    def _corner_jets(self, points: torch.Tensor, order: int) -> list[torch.Tensor]:
        """Jets of the 3-D corners: ``[n, 8, 3]``, ``[n, 6, 8, 3]``, ``[n, 21, 8, 3]``."""
        n = points.shape[0]
        posed = self.base_corners(points.dtype, points.device) @ rotation_matrix(points[:, :3])  # [n, 8, 3]
        out = [posed + points[:, None, 3:]]
        if order >= 1:
            gen = generators(points.dtype, points.device)
            eye = torch.eye(3, dtype=points.dtype, device=points.device)
            shift = eye[:, None, :].expand(n, 3, 8, 3)
            turn = torch.einsum("nvk,gkl->ngvl", posed, gen)
            out.append(torch.cat([shift, turn], dim=1))
        if order >= 2:
            # Only pairs of two rotation angles have a second derivative. Built out of place (no
            # writes into a preallocated tensor), so that torch.func transforms pass through:
            # row 0 of ``table`` is zero, pair k reads row ``slot[k]``.
            i, j = triu_pairs(6)
            rot = (i >= 3) & (j >= 3)
            pair_gen = gen[i[rot] - 3] @ gen[j[rot] - 3]  # the product order Rx Ry Rz
            turn2 = torch.einsum("nvk,gkl->ngvl", posed, pair_gen)  # [n, 6, 8, 3]
            table = torch.cat([torch.zeros_like(turn2[:, :1]), turn2], dim=1)
            slot = (rot.long().cumsum(0) * rot).to(points.device)
            out.append(table[:, slot])
        return out

    def _projection_jets(self, corners: list[torch.Tensor]) -> list[torch.Tensor]:
        """Jets of ``f (X, Y) / (Z - D)`` from the jets of the corners (quotient rule)."""
        f = self.focal_length
        p = corners[0]
        inv_w = 1.0 / (p[..., 2:] - self.camera_distance)  # [n, 8, 1]
        xy = p[..., :2]
        out = [f * xy * inv_w]
        if len(corners) >= 2:
            d1 = corners[1]
            xy_i, w_i = d1[..., :2], d1[..., 2:]
            iw = inv_w[:, None]
            out.append(f * (xy_i * iw - xy[:, None] * w_i * iw * iw))
        if len(corners) >= 3:
            i, j = triu_pairs(d1.shape[1], device=p.device)
            d2 = corners[2]
            xy_ij, w_ij = d2[..., :2], d2[..., 2:]
            xyc = xy[:, None]
            xi, xj = xy_i.index_select(1, i), xy_i.index_select(1, j)
            wi, wj = w_i.index_select(1, i), w_i.index_select(1, j)
            iw2 = iw * iw
            out.append(f * (xy_ij * iw - (xi * wj + xj * wi + xyc * w_ij - 2.0 * iw * xyc * wi * wj) * iw2))
        return out

    # ------------------------------------------------------------------ the fast path: pixels near edges

    def _live_edges(self, points: torch.Tensor, order: int):
        """What :meth:`_fast_jets` and :meth:`_dense_jets` start from: the target jets, the
        projected corner jets ``uv``, and the edges with a nonzero weight first (at most 9 on a
        cube, padded with weight-0 ones): their weights ``w`` ``[n, E]``, the number of live
        edges per sample (a list) and their end corners ``ia``, ``ib`` ``[n, E]``."""
        corners = self._corner_jets(points, order)
        targets = [c[..., list(_TARGET_INDEX), :].flatten(-2) for c in corners]
        uv = self._projection_jets(corners)
        weight = self._edge_weights(uv[0])  # [n, 12]
        live_count = (weight != 0).sum(1).tolist()
        keep = max(max(live_count), 1)
        sel = torch.argsort((weight == 0).to(torch.int8), dim=1, stable=True)[:, :keep]  # [n, E]
        edges = torch.tensor(_EDGES, device=points.device)
        return targets, uv, weight.gather(1, sel), live_count, edges[sel, 0], edges[sel, 1]

    def _fast_jets(
        self, points: torch.Tensor, order: int, chunk_size: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Jets of a non-empty batch: the image and target components, orders 0..order.

        The closed forms of :meth:`_dense_jets` (which evaluates them on every (edge, pixel)
        pair), evaluated only on the pixels within :meth:`_band_radius` of some visible edge (a
        quarter of the image for the default cube). Every term that the other pixels would get
        is below ``2^-60`` (float64) or ``2^-31`` (float32) of its scale, so there the
        derivatives are 0 and the value is the colour of the face that holds the pixel, if
        any (:meth:`_deep_coverage`). On the near pixels every edge contributes its angle term
        (:func:`~._gaussian.edge_angle`; the angles of the edges sum to the faces' coverage), and
        only the edges within the band radius of the pixel the rest (a third of the pairs).
        The per-sample geometry is computed for the whole batch, the per-pixel work
        ``chunk_size`` samples at a time, written into the preallocated results.
        """
        dtype, device = points.dtype, points.device
        n, S, sigma = points.shape[0], self.image_size, self.sigma
        targets, uv, w, live_count, ia, ib = self._live_edges(points, order)

        def ends(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return _edge_ends(t, idx, sigma)

        a, b = ends(uv[0], ia), ends(uv[0], ib)  # [n, E, 2]
        dvec = b - a
        length = torch.sqrt((dvec * dvec).sum(-1))
        length = torch.where(length > 0, length, torch.ones_like(length))
        tx, ty = dvec[..., 0] / length, dvec[..., 1] / length  # [n, E]
        radius = self._band_radius(length)
        near = self._near_mask(a, length, tx, ty, radius, w != 0)  # [n, S*S]
        cover = self._deep_coverage(uv[0], radius, w != 0)
        coef = []
        if order >= 1:
            coef = self._edge_coefficients([ends(t, ia) for t in uv[1:]], [ends(t, ib) for t in uv[1:]], dvec, w)

        shapes = [(), (self.param_dim,), (num_pairs(self.param_dim),)][: order + 1]
        images = [torch.zeros(n, *s, S, S, dtype=dtype, device=device) for s in shapes]
        for start in range(0, n, chunk_size):
            part = slice(start, start + chunk_size)
            ne = max(max(live_count[part]), 1)
            self._render_chunk(
                uv[0][part], a[part, :ne], tx[part, :ne], ty[part, :ne], length[part, :ne], radius[part, :ne],
                w[part, :ne], near[part], None if cover is None else cover[part], [c[part, ..., :ne] for c in coef],
                [image[part] for image in images],
            )
        return images, targets

    def _edge_coefficients(
        self, al: list[torch.Tensor], bl: list[torch.Tensor], dvec: torch.Tensor, w: torch.Tensor
    ) -> list[torch.Tensor]:
        """The weights of the basis of :meth:`_render_chunk` in each derivative: ``[n, d, 2, E]``
        (first derivatives, against ``K_0, K_1``) and, with second-order jets of the ends,
        ``[n, p, 10, E]`` (second derivatives, against ``K_0..K_3, A_x K_0..A_x K_2,
        A_y K_0..A_y K_2``). ``al``, ``bl``: the jets (orders 1 and 2) of the ends ``a``, ``b``
        ``[n, E, m, 2]``.

        First derivatives: :math:`w \\int_0^1 \\varphi(p(s))\\, \\nu_i(s) \\cdot N\\, ds = w (u_{0,i} K_0
        + u_{1,i} K_1)` with :math:`\\nu_i = \\alpha_i + s \\delta_i` the velocity of the edge's
        points, :math:`u_0 = \\alpha \\cdot N`, :math:`u_1 = \\delta \\cdot N`. Second
        derivatives: its derivative along :math:`\\theta_j`, a cubic in ``s`` times
        :math:`\\varphi`, :math:`\\sum_m K_m (s_m + A \\cdot v_m)` with :math:`A = a - q`.
        """
        nvec = torch.stack([dvec[..., 1], -dvec[..., 0]], dim=-1)  # [n, E, 2] outward normal R(b - a)
        al1, de1 = al[0], bl[0] - al[0]  # [n, E, d, 2]

        def dot(x, y):  # over the last axis (2): two products beat a reduction over 2
            return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1]

        def cross(x, y):
            return x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]

        u0 = dot(al1, nvec[:, :, None])  # [n, E, d]
        u1 = dot(de1, nvec[:, :, None])
        ww = w[:, None, None, :]
        out = [torch.stack([u0, u1], dim=-1).permute(0, 2, 3, 1) * ww]  # [n, d, 2, E]
        if len(al) == 1:
            return out
        i, j = triu_pairs(al1.shape[2], device=dvec.device)
        al2, de2 = al[1], bl[1] - al[1]  # [n, E, p, 2]
        al_i, al_j, de_i, de_j = (x.index_select(2, k) for x, k in ((al1, i), (al1, j), (de1, i), (de1, j)))
        u0i, u1i = u0.index_select(2, i), u1.index_select(2, i)
        dv = dvec[:, :, None]
        s0 = dot(al2, nvec[:, :, None]) + cross(al_i, de_j)
        s1 = dot(de2, nvec[:, :, None]) + cross(de_i, de_j) - u0i * dot(dv, al_j)
        s2 = -u0i * dot(dv, de_j) - u1i * dot(dv, al_j)
        s3 = -u1i * dot(dv, de_j)
        v0 = -u0i[..., None] * al_j
        v1 = -u0i[..., None] * de_j - u1i[..., None] * al_j
        v2 = -u1i[..., None] * de_j  # [n, E, p, 2]
        rows = torch.stack([s0, s1, s2, s3, v0[..., 0], v1[..., 0], v2[..., 0], v0[..., 1], v1[..., 1], v2[..., 1]], -1)
        out.append(rows.permute(0, 2, 3, 1) * ww)  # [n, p, 10, E]
        return out

    def _render_chunk(
        self, uv: torch.Tensor, a: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, length: torch.Tensor,
        radius: torch.Tensor, w: torch.Tensor, near: torch.Tensor, cover: torch.Tensor | None, coef: list[torch.Tensor],
        out: list[torch.Tensor],
    ) -> None:
        """Render a chunk of ``m`` samples into ``out`` (views of the results ``[m, ..., S, S]``,
        zero: only the pixels near an edge, and those deep inside a face, are written).

        ``uv`` ``[m, 8, 2]``: the projected corners; ``a`` ``[m, E, 2]``, ``(tx, ty)``,
        ``length``, ``radius``, ``w`` ``[m, E]``: the edges (sigma units), their band radius
        and weight; ``near`` ``[m, S*S]``: :meth:`_near_mask`; ``cover`` ``[m]``: whether a
        sample needs :meth:`_deep_coverage` (``None``: none does); ``coef``:
        :meth:`_edge_coefficients` (empty for order 0).

        Every (edge, near pixel) pair gets the edge's angle term, a few operations; the band
        and Owen's T terms of the value and the basis of the derivatives only the pairs of a
        pixel within the band radius of the edge (:meth:`_band_radius`: beyond it they sum to
        less than its bound), about a third of the pairs (1000 per sample for the default cube
        in float32, against 3000 (edge, near pixel) pairs).
        """
        m, ne = w.shape
        S, npix, sigma = self.image_size, self.image_size**2, self.sigma
        dtype, device = a.dtype, a.device
        count = near.sum(1)
        nu = int(count.max())
        slot = torch.where(near, near.cumsum(1) - 1, nu)  # far pixels go to a dump slot, cut off
        pix = torch.zeros(m, nu + 1, dtype=torch.long, device=device)
        pix.scatter_(1, slot, torch.arange(npix, device=device).expand(m, -1))
        valid = torch.arange(nu, device=device) < count[:, None]
        pix = torch.where(valid, pix[:, :nu], 0)  # [m, U]: the near pixels, then pixel 0 as padding

        # Every edge against every near pixel, [m, E, U], A = a - q: the angle terms.
        gx, gy = self.pixel_grid(dtype, device)
        qx, qy = gx[0] / sigma, gy[:, 0] / sigma  # columns, rows [S]
        ax_ = a[..., 0:1] - qx[pix % S][:, None, :]
        ay_ = a[..., 1:2] - qy[pix // S][:, None, :]
        txe, tye, lng = tx[..., None], ty[..., None], length[..., None]
        h = ax_ * tye - ay_ * txe
        ka = ax_ * txe + ay_ * tye
        kb = ka + lng
        value = (G.edge_angle_fast(h, ka, kb, lng) * w[..., None]).sum(1)  # [m, U]
        value.masked_fill_(~valid, 0.0)

        # The rest only on the pairs within the band radius of their (live) edge: the squared
        # distance to the segment is h^2, plus k_a^2 before its start (k_a > 0) or k_b^2
        # beyond its end (k_b < 0).
        dist2 = h * h + ka.clamp_min(0.0) ** 2 + kb.clamp_max(0.0) ** 2
        band = (dist2 <= (radius * radius)[..., None]) & (w != 0)[..., None] & valid[:, None, :]
        pairs = band.view(-1).nonzero()[:, 0]  # [B], flat over [m, E, U]
        edge = pairs // nu  # flat over [m, E]
        at = (edge // ne) * nu + pairs % nu  # flat over [m, U]

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1).index_select(0, pairs)

        hb, kab, kbb = pick(h), pick(ka), pick(kb)
        nb = coef[-1].shape[2] if coef else 0
        axb, ayb = (pick(ax_), pick(ay_)) if nb == 10 else (hb, hb)  # (unused below 10)
        lb, wb = length.reshape(-1).index_select(0, edge), w.reshape(-1).index_select(0, edge)
        # The moments' exponents are clamped at -(D^2/2 + 10), D the largest band radius: what
        # that changes is below e^-10 of the terms dropped beyond the band anyway, and it keeps
        # exp off its slow path (arguments down to -1000 otherwise).
        floor = -(0.5 * radius.max() ** 2 + 10.0)
        terms = _band_terms
        # (Sizes 0 and 1 would make torch.compile specialise and compile again: eager there.)
        if _compile_enabled(a) and pairs.numel() > 1 and not bool((lb < G.SHORT_EDGE).any()):
            terms = _compiled("band_terms", _band_terms_fused, _band_terms)
        vb, basis = terms(axb, ayb, hb, kab, kbb, lb, wb, floor, nb)
        flat_value = value.view(-1)
        flat_value.index_add_(0, at, vb)
        self._add_owens_t(flat_value, hb, kab, kbb, wb, at)
        # Each near pixel appears once in pix; the padding adds 0 to pixel 0.
        flat = out[0].view(m, npix)
        flat.scatter_add_(1, pix, value)
        if cover is not None and bool(cover.any()):
            deep = self._deep_coverage(uv)
            flat.add_(torch.where(near | ~cover[:, None], torch.zeros_like(deep), deep))
        if not coef:
            return
        # The basis on every (edge, near pixel) pair, 0 off the bands: [m, nb, E, U].
        dense = torch.zeros(m, nb, ne, nu, dtype=dtype, device=device)
        base = (edge // ne) * (nb * ne * nu) + pairs % (ne * nu)
        slots = base + (torch.arange(nb, device=device) * (ne * nu))[:, None]  # [nb, B]
        dense.view(-1).scatter_(0, slots.view(-1), basis[:nb].reshape(-1))  # (unique slots; beats index_copy_)
        for image, c in zip(out[1:], coef):
            rows, k = c.shape[1], c.shape[2]
            res = torch.bmm(c.reshape(m, rows, k * ne), dense[:, :k].reshape(m, k * ne, nu))  # [m, rows, U]
            image.view(m, rows, npix).scatter_add_(2, pix[:, None, :].expand(-1, rows, -1), res)

    def _band_radius(self, length: torch.Tensor) -> torch.Tensor:
        r"""``[n, E]``: the distance ``D`` (sigma units) beyond which an edge contributes nothing
        to the jets, to ``eps = 2^-60`` in float64 and ``2^-31`` in float32 (the dtype's machine
        epsilon / 256) of its scale; the same for every edge: 9.54 sigma in float64, 7.09 in
        float32.

        The bound. Let the pixel ``q`` be at distance ``rho >= D`` from the edge's segment. Along
        the segment (arc length ``t``) :math:`|p(t) - q|^2 \ge 
ho^2 + (t - t_0)^2`, so
        :math:`\int arphi(p(t) - q)\, dt \le e^{-
ho^2/2}/\sqrt{2\pi}` whatever the length.

        * Value: the edge's triangle integral minus its angle term (``edge_far``'s angle; the
          angles of a face's edges sum to its coverage of ``q``) is minus the Gaussian's mass
          in the part of the wedge ``(q, a, b)`` beyond the segment, all farther than ``rho``
          from ``q``: at most :math:`e^{-
ho^2/2}/2` (colours are at most about 1).
        * First derivatives: :math:`w \int_0^1 arphi\, 
u_i \cdot N\, ds \le |w| V_i
          e^{-
ho^2/2}/\sqrt{2\pi}` (``V_i`` the largest speed of the edge's points along
          coordinate ``i``, sigma units; ``|N| ds = dt``), against the derivative
          :math:`|w| V_i/\sqrt{2\pi}` that the same edge makes near itself (a blurred step of
          height ``w`` moving at speed ``V_i``): a ratio of :math:`e^{-
ho^2/2}`.
        * Second derivatives: the integrand gains :math:`
ablaarphi \cdot \partial_j p`
          with :math:`|
abla arphi| = |p| arphi`, :math:`\int |p| arphi\, dt \le (
ho +
          1) e^{-
ho^2/2}/\sqrt{2\pi}`, and terms in the corners' second derivatives
          ``A_ij`` and in :math:`\partial_j N` (at most ``2 V_j``); against the scale
          :math:`|w| (V_i V_j e^{-1/2} + A_{ij})/\sqrt{2\pi}` of the same edge near itself the
          ratio is below :math:`e^{1/2} (
ho + 3) e^{-
ho^2/2}`.

        So ``D`` solves :math:`2 (D + 3) e^{-D^2/2} \le \epsilon` (one fixed-point step from
        :math:`D_0 = \sqrt{2 \ln(1/\epsilon)}`, with a factor 2 to spare).
        """
        eps = torch.finfo(length.dtype).eps / 256
        d0 = math.sqrt(2.0 * math.log(1.0 / eps))
        return torch.full_like(length, math.sqrt(2.0 * math.log(4.0 * (d0 + 3.0) / eps)))

    def _near_mask(
        self, a: torch.Tensor, length: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, radius: torch.Tensor,
        live: torch.Tensor,
    ) -> torch.Tensor:
        """``[n, S*S]``: the pixels within ``radius`` ``[n, E]`` (sigma units, a margin of 1e-6
        added) of some ``live`` edge ``[n, E]`` (start ``a`` ``[n, E, 2]``, unit direction
        ``(tx, ty)``, ``length``).

        Row by row: the disc of ``radius`` around the segment (a stadium, convex) meets a row
        in an interval of columns, the union of the chords of the two end discs and of the band
        ``|h| <= D``, ``0 <= -k_a <= L``; the union over the edges by a difference array along
        each row.
        """
        S = self.image_size
        n = a.shape[0]
        dtype, device = a.dtype, a.device
        gx, gy = self.pixel_grid(dtype, device)
        qx, qy = gx[0] / self.sigma, gy[:, 0] / self.sigma
        big = torch.tensor(float("inf"), dtype=dtype, device=device)
        r = (radius * (1.0 + 1e-6))[..., None]  # [n, E, 1]
        ax, ay = a[..., 0:1], a[..., 1:2]
        txe, tye, lng = tx[..., None], ty[..., None], length[..., None]

        def chord(cx, cy):  # the disc around (cx, cy) on each row
            w2 = r * r - (qy - cy) ** 2
            half = torch.sqrt(w2.clamp_min(0.0))
            return torch.where(w2 >= 0, cx - half, big), torch.where(w2 >= 0, cx + half, -big)

        def slab(c_lo, c_hi, t):  # {x : (ax - x) t in [c_lo, c_hi]}
            moving = t != 0
            safe = torch.where(moving, t, torch.ones_like(t))
            e1, e2 = ax - c_lo / safe, ax - c_hi / safe
            every = (c_lo <= 0) & (c_hi >= 0)  # t = 0: every x or none
            lo = torch.where(moving, torch.minimum(e1, e2), torch.where(every, -big, big))
            hi = torch.where(moving, torch.maximum(e1, e2), torch.where(every, big, -big))
            return lo, hi

        c1 = (ay - qy) * txe  # h = (ax - x) ty - c1
        lo1, hi1 = slab(c1 - r, c1 + r, tye)
        c2 = (ay - qy) * tye  # k_a = (ax - x) tx + c2
        lo2, hi2 = slab(-lng - c2, -c2, txe)
        lo_m, hi_m = torch.maximum(lo1, lo2), torch.minimum(hi1, hi2)
        empty = lo_m > hi_m
        lo_a, hi_a = chord(ax, ay)
        lo_b, hi_b = chord(ax + lng * txe, ay + lng * tye)
        lo = torch.minimum(torch.minimum(lo_a, lo_b), torch.where(empty, big, lo_m))
        hi = torch.maximum(torch.maximum(hi_a, hi_b), torch.where(empty, -big, hi_m))  # [n, E, S]
        x0, step = qx[0], qx[1] - qx[0]
        c_lo = torch.ceil(((lo - x0) / step).clamp(-1.0, S)).long().clamp_min(0)
        c_hi = torch.floor(((hi - x0) / step).clamp(-1.0, S)).long().clamp_max(S - 1)
        on = ((c_lo <= c_hi) & live[..., None]).to(torch.int32).flatten(1)
        base = torch.arange(S, device=device) * (S + 1)
        diff = torch.zeros(n, S * (S + 1), dtype=torch.int32, device=device)
        diff.scatter_add_(1, (base + c_lo).flatten(1), on)
        diff.scatter_add_(1, (base + c_hi + 1).flatten(1), -on)
        return (diff.view(n, S, S + 1).cumsum(2)[..., :S] > 0).flatten(1)

    def _deep_coverage(self, uv: torch.Tensor, radius: torch.Tensor | None = None, live: torch.Tensor | None = None):
        """With ``radius`` and ``live`` ``[n, E]``: ``[n]``, whether a sample has a visible face
        wide enough to hold a pixel farther than the band radius from every edge (a convex
        face holds a disc of radius at most ``2 area / perimeter``), or ``None`` if none has
        one, as for the default cube. Without: ``[n, S*S]``, the colour of the visible face
        that holds each pixel, or 0 (the image value far from every edge).
        """
        faces = torch.tensor(_FACE_INDEX, device=uv.device)
        poly = uv[:, faces] / self.sigma  # [n, 6, 4, 2]
        step = poly.roll(-1, dims=2) - poly
        color = self._face_weights(uv)  # [n, 6], 0 where hidden
        if radius is not None:
            area2 = (poly[..., 0] * step[..., 1] - poly[..., 1] * step[..., 0]).sum(-1)  # twice the signed area
            perimeter = torch.sqrt((step * step).sum(-1)).sum(-1)
            reach = torch.where(live, radius, torch.full_like(radius, float("inf"))).amin(1, keepdim=True)
            wide = ((color != 0) & (area2.abs() > reach * perimeter)).any(1)
            return wide if bool(wide.any()) else None
        gx, gy = self.pixel_grid(uv.dtype, uv.device)
        q = torch.stack([gx.flatten(), gy.flatten()], dim=-1) / self.sigma  # [P, 2]
        rel = q[:, None, None] - poly[:, None]  # [n, P, 6, 4, 2]
        side = step[:, None, ..., 0] * rel[..., 1] - step[:, None, ..., 1] * rel[..., 0]
        inside = (side > 0).all(-1)  # counter-clockwise (visible) faces: interior on the left
        return (inside.to(uv.dtype) * color[:, None]).sum(-1)

    def _add_owens_t(
        self, value: torch.Tensor, h: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor, w: torch.Tensor,
        at: torch.Tensor,
    ) -> None:
        """Add the Owen's T terms of the edge ends, ``w (T(h, k_b) - T(h, k_a))``, of the
        (edge, pixel) pairs ``[B]`` to ``value`` (flat) at ``at`` ``[B]``, in place, where
        they matter (:func:`~._gaussian.owens_t_cutoff`), with the very ``h, k`` of the band
        terms (see :meth:`_add_near_terms`)."""
        cutoff = G.owens_t_cutoff(h.dtype)
        close = h.abs() < cutoff
        ia = (close & (ka.abs() < cutoff)).nonzero()[:, 0]
        ib = (close & (kb.abs() < cutoff)).nonzero()[:, 0]
        if ia.numel() + ib.numel() == 0:
            return
        sel = torch.cat([ia, ib])
        k = torch.cat([ka.index_select(0, ia), kb.index_select(0, ib)])
        near = G.right_triangle_near_fast
        if _compile_enabled(h) and sel.numel() > 1:
            near = _compiled("right_triangle_near", near)
        wt = w.index_select(0, sel)
        wt[: ia.numel()].neg_()
        value.index_add_(0, at.index_select(0, sel), near(h.index_select(0, sel), k) * wt)

    def _dense_jets(self, points: torch.Tensor, order: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`_fast_jets` evaluated on every (edge, pixel) pair, for tests: the renderer before
        the culling of pixels far from every edge (slower, the same function to rounding)."""
        dtype, device = points.dtype, points.device
        n, S, sigma = points.shape[0], self.image_size, self.sigma
        targets, uv, w, _, ia, ib = self._live_edges(points, order)

        def ends(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return _edge_ends(t, idx, sigma)

        field = self._edge_field(ends(uv[0], ia), ends(uv[0], ib))
        images = [self._render_value(field, w, compact=True)]
        if order == 0:
            return images, targets

        # Moments of the Gaussian along each edge; the densities at the ends are separable.
        a, dvec, h, ka = field.a, field.dvec, field.h, field.ka
        gx, gy = self.pixel_grid(dtype, device)
        qx, qy = gx[0] / sigma, gy[:, 0] / sigma

        def density(p: torch.Tensor) -> torch.Tensor:  # phi(p - q) on the grid, [n, E, P]
            ex = torch.exp(-0.5 * (p[..., 0:1] - qx) ** 2)
            ey = torch.exp(-0.5 * (p[..., 1:2] - qy) ** 2) / _TWO_PI
            return (ey[..., :, None] * ex[..., None, :]).flatten(-2)

        k0, k1, k2, k3 = G.edge_moments(
            ka, field.length[..., None], torch.exp(-0.5 * h * h), field.erf_a, field.erf_b, density(a), density(field.b)
        )
        nvec = torch.stack([dvec[..., 1], -dvec[..., 0]], dim=-1)  # [n, E, 2] outward normal R(b - a)
        al = ends(uv[1], ia)  # [n, E, d, 2]
        de = ends(uv[1], ib) - al
        u0 = (al * nvec[:, :, None]).sum(-1)  # [n, E, d]
        u1 = (de * nvec[:, :, None]).sum(-1)
        d1 = torch.einsum("nei,nep->nip", w[..., None] * u0, k0) + torch.einsum("nei,nep->nip", w[..., None] * u1, k1)
        images.append(d1.reshape(n, -1, S, S))
        if order == 1:
            return images, targets

        # Second derivatives: d/dtheta_j of int phi(p(s)) nu_i(s).N ds, a cubic in s times phi:
        # sum_m K_m (s_m + A.v_m), A = a - q; assembled as one matmul over a basis of
        # K_m, q_x K_m, q_y K_m per edge.
        i, j = triu_pairs(al.shape[2], device=device)
        al2 = ends(uv[2], ia)
        de2 = ends(uv[2], ib) - al2  # [n, E, p, 2]

        def dot(x, y):
            return (x * y).sum(-1)

        def cross(x, y):
            return x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]

        al_i, al_j, de_i, de_j = al[:, :, i], al[:, :, j], de[:, :, i], de[:, :, j]
        u0i, u1i = u0[:, :, i, None], u1[:, :, i, None]
        dv = dvec[:, :, None]
        s0 = dot(al2, nvec[:, :, None]) + cross(al_i, de_j)
        s1 = dot(de2, nvec[:, :, None]) + cross(de_i, de_j) - u0i[..., 0] * dot(dv, al_j)
        s2 = -u0i[..., 0] * dot(dv, de_j) - u1i[..., 0] * dot(dv, al_j)
        s3 = -u1i[..., 0] * dot(dv, de_j)
        v0 = -u0i * al_j
        v1 = -u0i * de_j - u1i * al_j
        v2 = -u1i * de_j
        a_e = a[:, :, None]
        ne, npairs = a.shape[1], len(i)
        # coef and basis are scratch buffers filled in place (a copy of the largest temporary
        # saved): the jets are data, never differentiated or transformed (the compact near terms
        # have data-dependent shapes anyway, see _add_near_terms).
        coef = torch.empty(n, npairs, ne, 10, dtype=dtype, device=device)
        for slot, c in enumerate(
            (s0 + dot(a_e, v0), s1 + dot(a_e, v1), s2 + dot(a_e, v2), s3,
             -v0[..., 0], -v1[..., 0], -v2[..., 0], -v0[..., 1], -v1[..., 1], -v2[..., 1])
        ):
            coef[..., slot] = (c * w[:, :, None]).transpose(1, 2)
        basis = torch.empty(n, ne, 10, S * S, dtype=dtype, device=device)
        for slot, k in enumerate((k0, k1, k2, k3)):
            basis[:, :, slot] = k
        qxf, qyf = qx.repeat(S), qy.repeat_interleave(S)  # [P], row-major
        for slot, k in enumerate((k0, k1, k2)):
            torch.mul(k, qxf, out=basis[:, :, 4 + slot])
            torch.mul(k, qyf, out=basis[:, :, 7 + slot])
        d2 = torch.bmm(coef.reshape(n, npairs, ne * 10), basis.reshape(n, ne * 10, S * S))
        images.append(d2.reshape(n, npairs, S, S))
        return images, targets

    def _add_near_terms(self, flat: torch.Tensor, field: _EdgeField, w: torch.Tensor, *, compact: bool) -> torch.Tensor:
        """Add the Owen's T terms of every edge end on a window of pixels around it.

        ``flat`` is ``[n, S*S + 1]`` (the last entry collects window pixels off the image).
        The terms use the very ``h, k`` of ``field`` that the far part used: the split into far
        and near parts is continuous only if both take the same branch ``|k| > |h|``.
        Window positions come from detached values, so ``torch.func`` transforms pass through.
        ``compact=False`` evaluates T on the whole window with 16 nodes (derivatives of the
        quadrature at round-off too; transformable). ``compact=True`` evaluates it only where
        it exceeds 2e-17, with 12 nodes in float64 and 8 in float32 (value at round-off of the
        dtype), using data-dependent shapes: not for ``vmap``.
        """
        S, sigma, hpx = self.image_size, self.sigma, self.pixel_size
        radius = math.ceil(G.T_CUTOFF * math.sqrt(2.0) * sigma / hpx + 0.5)
        off = torch.arange(-radius, radius + 1, device=flat.device)
        win = off.numel()
        ne = field.a.shape[1]
        pos = torch.cat([field.a, field.b], dim=1).detach()  # [n, 2E, 2] in sigma units
        # Nearest pixel (clamped so that windows of far-away corners stay representable).
        col0 = ((pos[..., 0] * sigma + self.extent) / hpx).round().clamp(-radius - 1, S + radius).long()
        row0 = ((self.extent - pos[..., 1] * sigma) / hpx).round().clamp(-radius - 1, S + radius).long()
        rows = (row0[..., None, None] + off[:, None]).expand(-1, -1, win, win).flatten(-2)  # [n, 2E, W*W]
        cols = (col0[..., None, None] + off[None, :]).expand(-1, -1, win, win).flatten(-2)
        inside = (rows >= 0) & (rows < S) & (cols >= 0) & (cols < S)
        pixel = torch.where(inside, rows * S + cols, torch.zeros_like(rows))
        h = torch.cat([field.h.gather(2, pixel[:, :ne]), field.h.gather(2, pixel[:, ne:])], dim=1)
        k = torch.cat([field.ka.gather(2, pixel[:, :ne]), field.kb.gather(2, pixel[:, ne:])], dim=1)
        sign = torch.cat([-w, w], dim=1)[..., None]  # [n, 2E, 1]: T(b) - T(a)
        if compact:
            todo = inside & (torch.maximum(h.abs(), k.abs()) < G.T_CUTOFF)
            nodes = 12 if flat.dtype == torch.float64 else 8
            near = torch.zeros_like(h)
            near[todo] = G.right_triangle_near(h[todo], k[todo], nodes)
            near = near * sign
        else:
            near = G.right_triangle_near(h, k) * sign
        index = torch.where(inside, pixel, torch.full_like(pixel, S * S))
        return flat.scatter_add(1, index.flatten(1), near.flatten(1))
