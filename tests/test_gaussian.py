"""The closed forms behind the cube renderer, against independent numerics (scipy, mpmath)."""

import math

import mpmath as mp
import numpy as np
import pytest
import scipy.integrate as si
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import owens_t as scipy_owens_t

from manifoldtrain.manifolds import _gaussian as G

f64 = torch.float64


@settings(max_examples=200)
@given(st.floats(0, 12), st.floats(0, 1))
def test_owens_t_matches_scipy(h, a):
    got = G.owens_t(torch.tensor(h, dtype=f64), torch.tensor(a, dtype=f64)).item()
    assert abs(got - scipy_owens_t(h, a)) < 1e-16


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 9), st.floats(0.01, 1))
def test_owens_t_derivatives_match_mpmath(h, a):
    mp.mp.dps = 30

    def t(hh):
        return mp.quad(lambda x: mp.e ** (-hh * hh * (1 + x * x) / 2) / (1 + x * x), [0, a]) / (2 * mp.pi)

    ht = torch.tensor(h, dtype=f64, requires_grad=True)
    val = G.owens_t(ht, torch.tensor(a, dtype=f64))
    (g1,) = torch.autograd.grad(val, ht, create_graph=True)
    (g2,) = torch.autograd.grad(g1, ht)
    assert abs(g1.item() - float(mp.diff(t, h, 1))) < 1e-15
    assert abs(g2.item() - float(mp.diff(t, h, 2))) < 1e-15


def _brute_triangle(a, b):
    """Signed standard-normal probability of the triangle (0, a, b) by adaptive 2-D quadrature."""
    a, b = np.asarray(a), np.asarray(b)
    cross = a[0] * b[1] - a[1] * b[0]

    def f(t, s):  # x = s (a + t (b - a)), Jacobian s |a x b|
        x = s * (a + t * (b - a))
        return s * abs(cross) * np.exp(-0.5 * x @ x) / (2 * np.pi)

    value, _ = si.dblquad(f, 0, 1, 0, 1, epsabs=1e-15, epsrel=1e-13)
    return np.sign(cross) * value


# Pixel-to-corner offsets in units of sigma: 0 or well above the underflow range of products.
coords = st.floats(-6, 6).filter(lambda x: x == 0 or abs(x) > 1e-100)


@settings(max_examples=15, deadline=None)
@given(coords, coords, coords, coords)
def test_triangle_integral_matches_2d_quadrature(ax, ay, bx, by):
    a, b = torch.tensor([ax, ay], dtype=f64), torch.tensor([bx, by], dtype=f64)
    assert abs(G.triangle_integral(a, b).item() - _brute_triangle([ax, ay], [bx, by])) < 1e-13


@settings(max_examples=200)
@given(coords, coords, coords, coords)
def test_far_plus_near_is_the_triangle_integral(ax, ay, bx, by):
    a, b = torch.tensor([ax, ay], dtype=f64), torch.tensor([bx, by], dtype=f64)
    h, ka, kb, length = G.edge_frame(a, b)
    if length.item() == 0:
        return
    s2 = math.sqrt(2)
    far = G.edge_far(h, ka, kb, length, torch.erf(h / s2), torch.erf(ka / s2), torch.erf(kb / s2))
    near = G.right_triangle_near(h, kb) - G.right_triangle_near(h, ka)
    assert abs((far + near).item() - G.triangle_integral(a, b).item()) < 1e-15


@settings(max_examples=100)
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_near_term_is_negligible_beyond_the_cutoff(h, k):
    if max(abs(h), abs(k)) <= G.T_CUTOFF:
        return
    assert abs(G.right_triangle_near(torch.tensor(h, dtype=f64), torch.tensor(k, dtype=f64)).item()) < 2e-17


def test_right_triangle_limits():
    z = torch.zeros((), dtype=f64)
    # Degenerate triangles are 0; a huge triangle with a right angle at (h, 0) tends to the quadrant.
    assert G.right_triangle(z, torch.tensor(3.0, dtype=f64)).item() == 0
    assert G.right_triangle(torch.tensor(2.0, dtype=f64), z).item() == 0
    big = G.right_triangle(torch.tensor(40.0, dtype=f64), torch.tensor(40.0, dtype=f64)).item()
    assert abs(big - 0.125) < 1e-15
    # Sign follows h k.
    h, k = torch.tensor(0.7, dtype=f64), torch.tensor(1.3, dtype=f64)
    p = G.right_triangle(h, k)
    assert p > 0 and G.right_triangle(-h, k) == -p and G.right_triangle(h, -k) == -p


@settings(max_examples=20, deadline=None)
@given(coords, coords, coords, coords)
def test_edge_moments_match_1d_quadrature(ax, ay, bx, by):
    a, b = np.array([ax, ay]), np.array([bx, by])
    length = np.linalg.norm(b - a)
    if length < 1e-3:
        return
    ta, tb = torch.tensor(a, dtype=f64), torch.tensor(b, dtype=f64)
    h, ka, kb, lt = G.edge_frame(ta, tb)
    s2 = math.sqrt(2)
    phi = lambda p: np.exp(-0.5 * p @ p) / (2 * np.pi)  # noqa: E731
    got = G.edge_moments(
        ka, lt, torch.exp(-0.5 * h * h), torch.erf(ka / s2), torch.erf(kb / s2),
        torch.tensor(phi(a), dtype=f64), torch.tensor(phi(b), dtype=f64),
    )
    for m, k in enumerate(got):
        want, _ = si.quad(lambda s: s**m * phi(a + s * (b - a)), 0, 1, epsabs=1e-16, epsrel=1e-13, limit=200)
        assert abs(k.item() - want) < 2e-15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gauss_legendre_cache_follows_dtype(dtype):
    t, w = G.gauss_legendre_01(8, dtype, torch.device("cpu"))
    assert t.dtype == w.dtype == dtype
    assert abs(w.sum().item() - 1.0) < 1e-6


def _edge_integral(h, ka, kb):
    """The fast path's split of a triangle integral: the far part plus the Owen's T ends."""
    s2 = math.sqrt(2.0)
    far = G.edge_far(h, ka, kb, kb - ka, torch.erf(h / s2), torch.erf(ka / s2), torch.erf(kb / s2))
    return far + G.right_triangle_near(h, kb) - G.right_triangle_near(h, ka)


@pytest.mark.parametrize("ka, kb", [(-3.0, 4.0), (2.0, 5.0), (-5.0, -0.5), (-20.0, 15.0), (-30.0, -10.0), (0.3, 0.9)])
@pytest.mark.parametrize("fn", [_edge_integral, lambda h, ka, kb: G.right_triangle(h, kb) - G.right_triangle(h, ka)])
def test_derivatives_on_the_edges_line(fn, ka, kb):
    """At h = 0 exactly (a pixel centre on the line of an edge) forward mode must give the true
    derivatives: sign(h) carries none, so they used to vanish (and be wrong), and atan2 at 0/0
    gave NaN."""
    x0 = torch.tensor([0.0, ka, kb], dtype=f64)
    f = lambda x: fn(x[0], x[1], x[2])  # noqa: E731
    grad = torch.func.jacfwd(f)(x0)
    hess = torch.func.jacfwd(torch.func.jacfwd(f))(x0)
    eps, eye = 1e-4, torch.eye(3, dtype=f64)
    fd_grad = torch.stack([(f(x0 + eps * e) - f(x0 - eps * e)) / (2 * eps) for e in eye])
    fd_hess = torch.stack([(torch.func.jacfwd(f)(x0 + eps * e) - torch.func.jacfwd(f)(x0 - eps * e)) / (2 * eps) for e in eye])
    assert torch.isfinite(grad).all() and torch.isfinite(hess).all()
    assert torch.allclose(grad, fd_grad, atol=1e-7), (grad, fd_grad)
    assert torch.allclose(hess, fd_hess, atol=1e-6), (hess, fd_hess)
    assert abs(grad[0].item()) > 1e-3  # the h-derivative is not trivially zero here
    # float32 forward mode: finite too
    g32 = torch.func.jacfwd(f)(x0.float())
    assert torch.isfinite(g32).all() and torch.allclose(g32.double(), grad, atol=1e-4)


def test_values_unchanged_by_the_smooth_forms():
    """The rewritten forms give the same values as sign(h) f(|h|, |k|), bit for bit, h = 0 included."""
    g = torch.Generator().manual_seed(0)
    h = torch.cat([torch.randn(2000, generator=g, dtype=f64) * 6, torch.zeros(50, dtype=f64)])
    k = torch.cat([torch.randn(2000, generator=g, dtype=f64) * 6, torch.linspace(-10, 10, 50, dtype=f64)])
    hh, kk = h.abs(), k.abs()
    m = torch.maximum(hh, kk)
    r = torch.minimum(hh, kk) / torch.where(m > 0, m, torch.ones_like(m))
    t = G.owens_t(m, r)
    old_near = torch.sign(h) * torch.sign(k) * torch.where(kk <= hh, -t, t)
    assert torch.equal(G.right_triangle_near(h, k), old_near)
    u = G._triangle_u(m, r, G.QUADRATURE_NODES)
    rect = 0.25 * torch.erf(hh / math.sqrt(2)) * torch.erf(kk / math.sqrt(2))
    old_rt = torch.sign(h) * torch.sign(k) * torch.where(kk <= hh, u, rect - u)
    assert torch.allclose(G.right_triangle(h, k), old_rt, rtol=0, atol=1e-16)
    ka, kb = k, k + torch.rand(2050, generator=g, dtype=f64) * 8
    length = kb - ka
    x = h * h + ka * kb
    old_angle = torch.sign(h) * torch.atan2(hh * length, x) / (2 * math.pi)
    s2 = math.sqrt(2.0)
    new = G.edge_far(h, ka, kb, length, torch.erf(h / s2), torch.erf(ka / s2), torch.erf(kb / s2))
    bands = new - old_angle
    # the bands are untouched, so the difference is the angle term's: zero (to round-off)
    eh, ea, eb = torch.erf(h / s2), torch.erf(ka / s2), torch.erf(kb / s2)
    sh = torch.sign(h)
    band_b = torch.where(kb.abs() > hh, 0.25 * (eh * eb - sh * torch.sign(kb)), torch.zeros_like(h))
    band_a = torch.where(ka.abs() > hh, 0.25 * (eh * ea - sh * torch.sign(ka)), torch.zeros_like(h))
    assert torch.allclose(bands, band_b - band_a, rtol=0, atol=1e-15)


# ----------------------------------------------------------------- the renderer's fast path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("on_line", [False, True])
def test_edge_far_is_its_angle_and_band_parts(dtype, on_line):
    """edge_far = edge_angle + edge_bands, and edge_angle_fast is edge_angle."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3000, generator=g, dtype=f64) * 8
    if on_line:  # pixels on an edge's line: inside the edge, beyond its ends, on a corner
        h[:300] = 0.0
    ka = torch.randn(3000, generator=g, dtype=f64) * 8
    ka[:20] = 0.0
    length = torch.rand(3000, generator=g, dtype=f64) * 15 + 0.01
    h, ka, length = h.to(dtype), ka.to(dtype), length.to(dtype)
    kb = ka + length
    s2 = math.sqrt(2.0)
    args = (h, ka, kb, length, torch.erf(h / s2), torch.erf(ka / s2), torch.erf(kb / s2))
    tol = 2 * torch.finfo(dtype).eps
    angle = G.edge_angle_fast(h, ka, kb, length)
    assert (angle - G.edge_angle(h, ka, kb, length)).abs().max() <= tol
    assert (angle + G.edge_bands(h, ka, kb, *args[4:]) - G.edge_far(*args)).abs().max() <= tol


def test_owens_t_cutoffs_bound_t():
    """Beyond the cutoffs Owen's T is below 2.1e-18 (float64) and 8e-11 (float32 results)."""
    for dtype, bound in ((f64, 2.1e-18), (torch.float32, 8e-11)):
        cutoff = G.owens_t_cutoff(dtype)
        a = np.linspace(0.0, 1.0, 101)
        assert scipy_owens_t(cutoff, a).max() < bound
        m = cutoff + np.linspace(0, 5, 51)
        assert (scipy_owens_t(m, 1.0) < bound).all()
        assert (np.exp(-m * m / 2) / (2 * np.sqrt(2 * np.pi) * m) < bound).all()  # the bound in the docstring


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_right_triangle_near_fast(dtype):
    """12 nodes (float64) and 7 (float32) against 40-node quadrature, for max(|h|, |k|) up to
    T_CUTOFF: at the dtype's round-off of the image (values near 1)."""
    g = torch.Generator().manual_seed(2)
    h = (torch.rand(20000, generator=g, dtype=f64) * 2 - 1) * G.T_CUTOFF
    k = (torch.rand(20000, generator=g, dtype=f64) * 2 - 1) * G.T_CUTOFF
    h[:100] = 0.0
    k[100:200] = 0.0
    want = G.right_triangle_near(h, k, nodes=40)
    got = G.right_triangle_near_fast(h.to(dtype), k.to(dtype)).double()
    assert (got - want).abs().max() < (1e-16 if dtype == f64 else 1e-7)
    # the quadrature alone (inputs in float64): 7 nodes are within 1.1e-10
    t, w = np.polynomial.legendre.leggauss(7)
    hh, kk = h.numpy(), k.numpy()
    m = np.maximum(np.abs(hh), np.abs(kk))
    r = np.minimum(np.abs(hh), np.abs(kk)) / np.where(m > 0, m, 1)
    x = r[:, None] * 0.5 * (t + 1)
    quad = (np.exp(-0.5 * m[:, None] ** 2 * (1 + x * x)) / (1 + x * x)) @ (0.5 * w) * r / (2 * np.pi)
    assert np.abs(quad - np.abs(want.numpy())).max() < 1.1e-10


def test_edge_moments_into_buffers():
    """out= and short_edges=False (the renderer's fast path) give the same moments, short edges
    included (quadrature there)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(4, 500, generator=g, dtype=f64) * 4
    ka = torch.randn(4, 500, generator=g, dtype=f64) * 6
    length = torch.tensor([0.3, 2.0, 7.0, 15.0], dtype=f64)[:, None]
    kb = ka + length
    s2 = math.sqrt(2.0)
    args = (ka, length, torch.exp(-0.5 * h * h), torch.erf(ka / s2), torch.erf(kb / s2),
            torch.exp(-0.5 * (h * h + ka * ka)) / (2 * math.pi), torch.exp(-0.5 * (h * h + kb * kb)) / (2 * math.pi))
    want = G.edge_moments(*args)
    out = torch.empty(4, 4, 500, dtype=f64).unbind(0)
    got = G.edge_moments(*args, out=out)
    for x, y, o in zip(got, want, out):
        assert torch.equal(x, y) and x.data_ptr() == o.data_ptr()
    long = [slice(1, None)]
    plain = G.edge_moments(*(a[long] if a.shape[0] == 4 else a for a in args), short_edges=False)
    for x, y in zip(plain, want):
        assert torch.equal(x, y[1:])
