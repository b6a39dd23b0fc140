r"""Exact integrals of a 2-D Gaussian over polygons, and their derivatives.

Everything here works in units of the Gaussian's standard deviation ``sigma``, with the
pixel (the Gaussian's centre) at the origin, and :math:`\varphi` the standard bivariate
normal density.

The polygon integral is a sum over directed edges ``a -> b`` of the signed integral over
the triangle ``(0, a, b)``. With :math:`\hat t = (b-a)/|b-a|`, the signed distance
:math:`h = a \times \hat t` of the edge's line and the tangential coordinates
:math:`k_a = a \cdot \hat t`, :math:`k_b = b \cdot \hat t`, that triangle integral is
:math:`P_s(h, k_b) - P_s(h, k_a)`, where :math:`P_s(h, k)` is the signed probability of the
right triangle ``(0, h n, h n + k t)``: with :math:`m = \max(|h|,|k|)`,
:math:`r = \min(|h|,|k|)/m`,

.. math::
    P(|h|, |k|) = \begin{cases}
        U(|h|, |k|) & |k| \le |h| \\
        \tfrac14 \operatorname{erf}(|h|/\sqrt2) \operatorname{erf}(|k|/\sqrt2) - U(|k|, |h|) & |k| > |h|
    \end{cases}, \qquad
    U(m, n) = \frac{\arctan r}{2\pi} - T(m, r),

:math:`T` being Owen's T function (the rectangle ``[0,h] x [0,k]`` is two such triangles).
For :math:`0 \le r \le 1` both :math:`T` and :math:`U` are integrals over ``[0, r]`` of
smooth integrands whose nearest singularities are at :math:`\pm i`; Gauss-Legendre
quadrature with :data:`QUADRATURE_NODES` nodes reaches float64 round-off (checked against
``mpmath`` in the tests).

Derivatives come from the moving boundary (Reynolds transport): moving the edge's points
with velocity :math:`\nu(s) = (1-s)\alpha + s\beta` changes the polygon integral by
:math:`\int_0^1 \varphi(p(s))\, \nu(s) \cdot N\, ds` with :math:`p(s) = a + s(b-a)` and
:math:`N = R(b-a)` the outward normal (``R(x, y) = (y, -x)``) for a counter-clockwise polygon.
This needs only the moments :math:`K_m = \int_0^1 s^m \varphi(p(s))\, ds`, which are
closed forms in ``erf`` and ``exp`` (:func:`edge_moments`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Gauss-Legendre nodes used for Owen's T on ``[0, r]``, ``r <= 1`` (12 already reach round-off).
QUADRATURE_NODES = 16

#: Owen's T(m, r) for m beyond this is below 2e-17 (``T <= exp(-m^2/2)/8``): the fast path skips it.
T_CUTOFF = 8.6

_SQRT2 = math.sqrt(2.0)
_TWO_PI = 2.0 * math.pi
_GL_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def gauss_legendre_01(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on ``[0, 1]`` (cached per dtype and device)."""
    key = (n, dtype, torch.device(device))
    if key not in _GL_CACHE:
        t, w = np.polynomial.legendre.leggauss(n)
        _GL_CACHE[key] = (
            torch.tensor(0.5 * (t + 1.0), dtype=dtype, device=device),
            torch.tensor(0.5 * w, dtype=dtype, device=device),
        )
    return _GL_CACHE[key]


def owens_t(h: torch.Tensor, a: torch.Tensor, nodes: int = QUADRATURE_NODES) -> torch.Tensor:
    r"""Owen's T function :math:`T(h, a)` for ``h >= 0`` and ``|a| <= 1``.

    .. math:: T(h, a) = \frac{1}{2\pi} \int_0^a \frac{e^{-h^2 (1 + x^2)/2}}{1 + x^2} dx

    Odd in ``a`` (so is the quadrature, exactly). Differentiable (it is a fixed quadrature of
    elementary functions).
    """
    t, w = gauss_legendre_01(nodes, h.dtype, h.device)
    total = torch.zeros_like(h * a)
    half_h2 = 0.5 * h * h
    for ti, wi in zip(t, w):
        one_x2 = 1.0 + (a * ti) ** 2
        total = total + wi * torch.exp(-half_h2 * one_x2) / one_x2
    return total * a / _TWO_PI


def _triangle_u(m: torch.Tensor, r: torch.Tensor, nodes: int) -> torch.Tensor:
    """U(m, r m) = arctan(r)/2pi - T(m, r), as one quadrature (accurate also for small m)."""
    t, w = gauss_legendre_01(nodes, m.dtype, m.device)
    total = torch.zeros_like(m * r)
    half_m2 = 0.5 * m * m
    for ti, wi in zip(t, w):
        one_x2 = 1.0 + (r * ti) ** 2
        total = total - wi * torch.expm1(-half_m2 * one_x2) / one_x2
    return total * r / _TWO_PI


def right_triangle(h: torch.Tensor, k: torch.Tensor, nodes: int = QUADRATURE_NODES) -> torch.Tensor:
    """Signed Gaussian integral :math:`P_s(h, k)` of the right triangle ``(0, (h, 0), (h, k))``.

    The straightforward evaluation on every element (one quadrature each), differentiable
    twice by ``torch.func``. Positive when ``h k > 0``.
    """
    use_h = k.abs() <= h.abs()
    m, r = _signed_ratio(h, k, use_h)
    u = _triangle_u(m, r, nodes)  # odd in r
    rect = 0.25 * torch.erf(h / _SQRT2) * torch.erf(k / _SQRT2)
    return torch.where(use_h, torch.sign(h) * u, rect - torch.sign(k) * u)


def _signed_ratio(h: torch.Tensor, k: torch.Tensor, use_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``m = max(|h|, |k|)`` and the *signed* ratio ``r = k/|h|`` (where ``use_h``, i.e.
    ``|k| <= |h|``) or ``h/|k|`` (elsewhere), ``|r| <= 1``.

    The terms of :func:`right_triangle` are odd in ``r``, so ``sign(h) sign(k) f(|r|)`` is
    written ``sign(.) f(r)``: smooth across ``h = 0`` (a pixel on an edge's line), where
    ``sign(h)`` would carry no derivative. ``m = 0`` (a pixel on a corner) divides by 1.
    """
    m = torch.where(use_h, h.abs(), k.abs())
    safe = torch.where(m > 0, m, torch.ones_like(m))
    return m, torch.where(use_h, k, h) / safe


def edge_frame(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Line coordinates of directed edges ``a -> b`` (``[..., 2]``, relative to the pixel).

    Returns ``h, k_a, k_b, length``: signed distance of the line (``a x t``), tangential
    coordinates of both ends, and the edge length.
    """
    dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    length = torch.sqrt(dx * dx + dy * dy)
    safe = torch.where(length > 0, length, torch.ones_like(length))
    tx, ty = dx / safe, dy / safe
    h = a[..., 0] * ty - a[..., 1] * tx
    ka = a[..., 0] * tx + a[..., 1] * ty
    return h, ka, ka + length, length


def triangle_integral(a: torch.Tensor, b: torch.Tensor, nodes: int = QUADRATURE_NODES) -> torch.Tensor:
    """Signed Gaussian integral over the triangle ``(0, a, b)`` (positive if counter-clockwise)."""
    h, ka, kb, _ = edge_frame(a, b)
    return right_triangle(h, kb, nodes) - right_triangle(h, ka, nodes)


def edge_far(
    h: torch.Tensor,
    ka: torch.Tensor,
    kb: torch.Tensor,
    length: torch.Tensor,
    erf_h: torch.Tensor,
    erf_a: torch.Tensor,
    erf_b: torch.Tensor,
) -> torch.Tensor:
    r""":func:`triangle_integral` without its Owen's T terms: exact where both ends have
    ``max(|h|, |k|) > T_CUTOFF``.

    Takes ``erf_h = erf(h/sqrt2)``, ``erf_a = erf(k_a/sqrt2)``, ``erf_b = erf(k_b/sqrt2)``
    (shared with :func:`edge_moments`). The angle the edge subtends plus the bands along its
    line:

    .. math::
        \frac{\operatorname{sign}(h)}{2\pi} \operatorname{atan2}(|h| L, h^2 + k_a k_b)
        + \sum_{k \in \{k_b, -k_a\}} \pm [|k| > |h|]\, \tfrac14 \big(\operatorname{erf}
        \tfrac{h}{\sqrt2} \operatorname{erf}\tfrac{k}{\sqrt2} - \operatorname{sign}(hk)\big)
    """
    return edge_angle(h, ka, kb, length) + edge_bands(h, ka, kb, erf_h, erf_a, erf_b)


def edge_angle(h: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    r"""The angle term of :func:`edge_far`, :math:`\operatorname{sign}(h) \operatorname{atan2}(|h| L,
    h^2 + k_a k_b) / 2\pi`: the fraction of the Gaussian's mass in the wedge that the edge
    subtends at the pixel (the angles of a closed polygon's edges sum to its winding number)."""
    # sign(h) atan2(|h| L, x) is atan2(h L, x) wherever h != 0, and the latter is smooth across
    # h = 0 (a pixel on the edge's line) except for its value on the cut h = 0, x < 0 (a pixel
    # on the edge itself), +-pi instead of 0: subtracted there as a constant, so that forward
    # and reverse mode see the true derivative L / x. x = 0 with h = 0 (a pixel on a corner)
    # takes x = 1: value 0 as before, no 0/0 in the derivative.
    x = h * h + ka * kb
    on_line = h == 0
    x = torch.where(on_line & (x == 0), torch.ones_like(x), x)
    raw = torch.atan2(h * length, x)
    return (raw - torch.where(on_line & (x < 0), torch.copysign(torch.full_like(raw, math.pi), raw), 0.0)) / _TWO_PI


def edge_bands(
    h: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor, erf_h: torch.Tensor, erf_a: torch.Tensor, erf_b: torch.Tensor
) -> torch.Tensor:
    r"""The band terms of :func:`edge_far` (it without :func:`edge_angle`):
    :math:`\sum_{k \in \{k_b, -k_a\}} \pm [|k| > |h|]\, \tfrac14 (\operatorname{erf}\tfrac{h}{\sqrt2}
    \operatorname{erf}\tfrac{k}{\sqrt2} - \operatorname{sign}(hk))`. Below the bound of
    ``Cube._band_radius``, with the edge's Owen's T terms, for pixels far from the edge."""
    ah = h.abs()
    sh = torch.sign(h)
    band_b = torch.where(kb.abs() > ah, 0.25 * (erf_h * erf_b - sh * torch.sign(kb)), 0.0)
    band_a = torch.where(ka.abs() > ah, 0.25 * (erf_h * erf_a - sh * torch.sign(ka)), 0.0)
    return band_b - band_a


def right_triangle_near(h: torch.Tensor, k: torch.Tensor, nodes: int = QUADRATURE_NODES) -> torch.Tensor:
    """The Owen's T term of :func:`right_triangle` (``right_triangle = far + near``).

    Below 2e-17 wherever ``max(|h|,|k|) > T_CUTOFF``.
    """
    use_h = k.abs() <= h.abs()
    m, r = _signed_ratio(h, k, use_h)
    t = owens_t(m, r, nodes)  # odd in r
    return torch.where(use_h, -torch.sign(h) * t, torch.sign(k) * t)


#: :data:`T_CUTOFF` for float32 results: Owen's T(m, r) beyond it is below 8e-11 (about
#: ``2^-33``, a five-hundredth of float32's rounding of values near 1); see :func:`owens_t_cutoff`.
T_CUTOFF_FLOAT32 = 6.3


def owens_t_cutoff(dtype: torch.dtype) -> float:
    r"""Where the renderer's fast path stops evaluating Owen's T: ``T(m, r)`` with
    ``m = max(|h|, |k|)`` at or beyond this is dropped.

    :math:`T(m, r) \le \frac{1}{2\pi}\int_0^1 e^{-m^2 (1 + x^2)/2} dx \le
    \frac{e^{-m^2/2}}{2\sqrt{2\pi}\, m}`: below 2.1e-18 at :data:`T_CUTOFF` (float64) and
    below 8e-11 at :data:`T_CUTOFF_FLOAT32` (float32 results).
    """
    return T_CUTOFF if dtype == torch.float64 else T_CUTOFF_FLOAT32


def right_triangle_near_fast(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """:func:`right_triangle_near` for the renderer's fast path: 12 quadrature nodes in float64
    and 7 in float32 (quadrature errors below 6e-17 and 1.1e-10 for ``max(|h|, |k|) <=
    T_CUTOFF``, checked against 40 nodes in the tests), the nodes as Python numbers."""
    nodes = 12 if h.dtype == torch.float64 else 7
    t, w = np.polynomial.legendre.leggauss(nodes)
    ah, ak = h.abs(), k.abs()
    use_h = ak <= ah
    m = torch.where(use_h, ah, ak)
    r = torch.where(use_h, k, h) / torch.where(m > 0, m, torch.ones_like(m))
    r2 = r * r
    half_m2 = -0.5 * m * m
    total = torch.zeros_like(m)
    for ti, wi in zip(0.5 * (t + 1.0), 0.5 * w):
        one_x2 = 1.0 + float(ti * ti) * r2
        total += float(wi) * torch.exp(half_m2 * one_x2) / one_x2
    value = total * r * (1.0 / _TWO_PI)
    return torch.where(use_h, -torch.sign(h) * value, torch.sign(k) * value)


def edge_angle_fast(h: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """:func:`edge_angle` for the renderer's fast path: the same function, with the correction
    for pixels on an edge's line (``h == 0``) only evaluated where there are such pixels."""
    if bool((h == 0).any()):
        return edge_angle(h, ka, kb, length)
    return torch.atan2(h * length, h * h + ka * kb) * (1.0 / _TWO_PI)


#: Edges shorter than this, in units of sigma, get their moments by quadrature, since the
#: upward recurrence loses about ``L**-6`` ulps on ``K_3``.
SHORT_EDGE = 1.0


def edge_moments(
    ka: torch.Tensor,
    length: torch.Tensor,
    exp_h: torch.Tensor,
    erf_a: torch.Tensor,
    erf_b: torch.Tensor,
    phi_a: torch.Tensor,
    phi_b: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    short_edges: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Moments :math:`K_m = \int_0^1 s^m \varphi(a + s(b-a))\, ds`, ``m = 0..3``.

    Takes ``exp_h = exp(-h^2/2)``, ``erf_a``, ``erf_b`` as in :func:`edge_far` and the
    densities ``phi_a``, ``phi_b`` at the ends; ``length`` broadcasts against them. With
    :math:`L = |b - a|` and :math:`s_0 = -k_a/L`:

    .. math::
        K_0 &= \frac{e^{-h^2/2}}{2\sqrt{2\pi}\, L}
               \left(\operatorname{erf}\frac{k_b}{\sqrt2} - \operatorname{erf}\frac{k_a}{\sqrt2}\right) \\
        K_{m+1} &= s_0 K_m + \frac{m K_{m-1} - \varphi(b) + [m=0]\, \varphi(a)}{L^2}

    Edges shorter than :data:`SHORT_EDGE` use 16-node Gauss-Legendre quadrature of
    :math:`e^{-h^2/2} e^{-(k_a + sL)^2/2} / 2\pi` instead (smooth there). ``length`` must be
    positive. ``out``: four tensors of the broadcast shape to write the moments into (then
    returned), for the renderer's fast path; not for autograd. ``short_edges=False``: the
    caller guarantees that no edge is shorter than :data:`SHORT_EDGE` (no data-dependent
    branch, for ``torch.compile``).
    """
    inv_l = 1.0 / length
    inv_l2 = inv_l * inv_l
    o = (None,) * 4 if out is None else out
    k0 = torch.mul(exp_h * (erf_b - erf_a), inv_l / (2.0 * math.sqrt(2.0 * math.pi)), out=o[0])
    s0 = -ka * inv_l
    k1 = torch.add(s0 * k0, (phi_a - phi_b) * inv_l2, out=o[1])
    k2 = torch.add(s0 * k1, (k0 - phi_b) * inv_l2, out=o[2])
    k3 = torch.add(s0 * k2, (2.0 * k1 - phi_b) * inv_l2, out=o[3])
    moments = [k0, k1, k2, k3]
    if short_edges and bool((length < SHORT_EDGE).any()):
        short = (length < SHORT_EDGE).expand_as(k0)
        t, w = gauss_legendre_01(QUADRATURE_NODES, k0.dtype, k0.device)
        ka_s, l_s = ka.expand_as(k0)[short], length.expand_as(k0)[short]
        scale = exp_h.expand_as(k0)[short] / _TWO_PI
        quad = [torch.zeros_like(ka_s) for _ in range(4)]
        for ti, wi in zip(t, w):
            g = wi * torch.exp(-0.5 * (ka_s + ti * l_s) ** 2)
            for m in range(4):
                quad[m] = quad[m] + g * ti**m
        for m in range(4):
            if out is None:
                moments[m] = moments[m].masked_scatter(short, quad[m] * scale)
            else:
                moments[m].masked_scatter_(short, quad[m] * scale)
    return tuple(moments)
