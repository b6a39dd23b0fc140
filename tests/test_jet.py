import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from manifoldtrain import Jet, chart_jet, num_pairs, pair_index, triu_pairs


@given(st.integers(1, 12))
def test_triu_pairs_order_and_pair_index(d):
    i, j = triu_pairs(d)
    assert len(i) == num_pairs(d) == d * (d + 1) // 2
    pairs = list(zip(i.tolist(), j.tolist()))
    assert pairs == sorted(pairs)  # row-major upper triangle
    assert all(a <= b for a, b in pairs)
    for k, (a, b) in enumerate(pairs):
        assert pair_index(a, b, d) == k == pair_index(b, a, d)


def test_cube_pair_order_is_the_spec_order():
    names = "xyzabc"
    i, j = triu_pairs(6)
    got = [names[a] + names[b] for a, b in zip(i.tolist(), j.tolist())]
    spec = "xx, xy, xz, xa, xb, xc, yy, yz, ya, yb, yc, zz, za, zb, zc, aa, ab, ac, bb, bc, cc".split(", ")
    assert got == spec


def _poly(theta):
    # f(t) = [t0^2 t1 + 3 t2, sin(t0) t2^2]
    return torch.stack([theta[:, 0] ** 2 * theta[:, 1] + 3 * theta[:, 2], torch.sin(theta[:, 0]) * theta[:, 2] ** 2], dim=1)


@given(st.lists(st.floats(-2, 2), min_size=3, max_size=3))
def test_chart_jet_matches_hand_derivatives(t):
    theta = torch.tensor([t], dtype=torch.float64)
    jet = chart_jet(_poly, theta, order=2)
    t0, t1, t2 = t
    import math

    d1 = [[2 * t0 * t1, math.cos(t0) * t2**2], [t0**2, 0.0], [3.0, 2 * math.sin(t0) * t2]]
    # pairs 00, 01, 02, 11, 12, 22
    d2 = [
        [2 * t1, -math.sin(t0) * t2**2],
        [2 * t0, 0.0],
        [0.0, 2 * math.cos(t0) * t2],
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, 2 * math.sin(t0)],
    ]
    torch.testing.assert_close(jet.value, _poly(theta))
    torch.testing.assert_close(jet.d1[0], torch.tensor(d1, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jet.d2[0], torch.tensor(d2, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_chart_jet_orders_and_chunking():
    theta = torch.randn(4, 3, dtype=torch.float64)
    full = chart_jet(_poly, theta, 2)
    chunked = chart_jet(_poly, theta, 2, chunk_size=2)
    assert chart_jet(_poly, theta, 0).order == 0
    assert chart_jet(_poly, theta, 1).order == 1
    for a, b in zip(full.components(), chunked.components()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_jet_validation_names_the_argument():
    with pytest.raises(ValueError, match="d1"):
        Jet(torch.zeros(3, 5), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="d2"):
        Jet(torch.zeros(3, 5), torch.zeros(3, 4, 5), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="d2"):
        Jet(torch.zeros(3, 5), None, torch.zeros(3, 10, 5))
    with pytest.raises(TypeError, match="value"):
        Jet([1.0, 2.0])
    with pytest.raises(ValueError, match="d1"):
        Jet(torch.zeros(3, 5), torch.zeros(3, 4, 5, dtype=torch.float64))


def test_jet_helpers():
    d = 3
    value = torch.randn(2, 4, dtype=torch.float64)
    d1 = torch.randn(2, d, 4, dtype=torch.float64)
    d2 = torch.randn(2, num_pairs(d), 4, dtype=torch.float64)
    jet = Jet(value, d1, d2)
    assert (jet.order, jet.param_dim, jet.shape, len(jet)) == (2, 3, (4,), 2)
    assert jet[1].value.shape == (1, 4) and jet[-1].d2.shape == (1, 6, 4)
    assert jet.truncate(1).order == 1
    full = jet.d2_matrix()
    torch.testing.assert_close(full, full.transpose(1, 2))
    assert torch.equal(full[:, 1, 2], d2[:, pair_index(1, 2, d)])
    # directional derivatives equal v^T f' and v^T f'' v
    v = torch.randn(2, 5, d, dtype=torch.float64)
    dv, dvv = jet.directional(v)
    torch.testing.assert_close(dv, torch.einsum("nkd,ndp->nkp", v, d1))
    torch.testing.assert_close(dvv, torch.einsum("nkd,ndep,nke->nkp", v, full, v))
    with pytest.raises(ValueError, match="v"):
        jet.directional(torch.randn(2, 5, d + 1, dtype=torch.float64))


def test_directional_matches_chart_jet_along_a_line():
    theta = torch.randn(3, 3, dtype=torch.float64)
    v = torch.randn(3, 1, 3, dtype=torch.float64)
    jet = chart_jet(_poly, theta, 2)
    line = chart_jet(lambda s: _poly(theta + s * v[:, 0]), torch.zeros(3, 1, dtype=torch.float64), 2)
    dv, dvv = jet.directional(v)
    torch.testing.assert_close(dv[:, 0], line.d1[:, 0])
    torch.testing.assert_close(dvv[:, 0], line.d2[:, 0])


def test_mixed_derivative_is_the_cross_derivative_of_a_plane():
    """f_uv from the stored pairs equals d^2/ds dt f(theta + s u + t v) by nested torch.func."""
    theta = torch.randn(3, 3, dtype=torch.float64)
    u, v = torch.randn(3, 2, 3, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    jet = chart_jet(_poly, theta, 2)
    got = jet.mixed(u, v)
    for k in range(2):
        plane = chart_jet(lambda st: _poly(theta + st[:, :1] * u[:, k] + st[:, 1:] * v[:, k]), torch.zeros(3, 2, dtype=torch.float64), 2)
        torch.testing.assert_close(got[:, k], plane.d2[:, 1])  # pair (0, 1) = (s, t)
    torch.testing.assert_close(jet.mixed(u, v), jet.mixed(v, u))
    torch.testing.assert_close(jet.mixed(v, v), jet.directional(v)[1])
    with pytest.raises(ValueError, match="v"):
        jet.mixed(u, v[:, :1])
    with pytest.raises(ValueError, match="second derivatives"):
        jet.truncate(1).mixed(u, v)


def test_pair_weights_count_the_full_matrix():
    from manifoldtrain.jet import pair_weights

    d = 4
    d2 = torch.randn(2, num_pairs(d), 3, dtype=torch.float64)
    jet = Jet(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, d, 3, dtype=torch.float64), d2)
    full_sum = jet.d2_matrix().pow(2).sum((1, 2))
    torch.testing.assert_close((d2.pow(2) * pair_weights(d)[:, None]).sum(1), full_sum)
