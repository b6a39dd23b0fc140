"""The exact oracle past a focal point of the manifold: the second-order test, saddle escapes,
focal distances, and the flags the evaluation carries (issue 24, item 2)."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import Tanh
from manifoldtrain.robustness import OracleError, exact_oracle, focal_distance, noisy_rmse, projection_hessian
from toy_manifolds import Sphere

F64 = torch.float64


class Cylinder(Manifold):
    """x(phi, z) = (r cos phi, r sin phi, z): focal distance r everywhere (the axis), flat along z."""

    param_dim = 2
    point_shape = (2,)
    input_shape = (3,)
    target_shape = (3,)

    def __init__(self, radius=1.0):
        self.radius = radius

    def __repr__(self):
        return f"Cylinder({self.radius})"

    def sample(self, n, generator=None, *, dtype=None, device=None):
        u = torch.rand(n, 2, generator=generator, dtype=F64)
        return torch.stack([2 * math.pi * u[:, 0], u[:, 1] - 0.5], 1).to(dtype=dtype or torch.get_default_dtype(), device=device)

    def input(self, points, theta):
        phi, z = points[:, 0] + theta[:, 0], points[:, 1] + theta[:, 1]
        return torch.stack([self.radius * torch.cos(phi), self.radius * torch.sin(phi), z], 1)

    def target(self, points, theta):
        phi, z = points[:, 0] + theta[:, 0], points[:, 1] + theta[:, 1]
        return torch.stack([torch.cos(phi), torch.sin(phi), z], 1)


def inward(m, p, s):
    """x(p) moved s along the inward normal (towards the axis, past it when s > radius)."""
    x = m.input(p, torch.zeros_like(p))
    return x - s * torch.cat([x[:, :2] / m.radius, torch.zeros_like(x[:, 2:])], 1)


def test_cylinder_past_the_axis_finds_the_antipode():
    m = Cylinder(1.0)
    p = m.sample(6, torch.Generator().manual_seed(0), dtype=F64)
    perturbed = inward(m, p, 1.5)  # the clean point is a saddle (a maximum around the axis)
    result = exact_oracle(m, p, perturbed)
    assert bool(result.converged.all()) and bool(result.minimum.all())
    assert result.escapes.tolist() == [1] * 6
    torch.testing.assert_close(torch.remainder(result.points[:, 0] - p[:, 0], 2 * math.pi), torch.full((6,), math.pi, dtype=F64))
    torch.testing.assert_close(result.distance, torch.full((6,), 0.5, dtype=F64))
    torch.testing.assert_close(result.curvature, torch.full((6,), 0.5, dtype=F64))  # 1 - 0.5 / 1
    # Without escapes the saddle is detected, never reported as converged.
    flagged = exact_oracle(m, p, perturbed, max_escapes=0, strict=False)
    assert not bool(flagged.converged.any()) and not bool(flagged.minimum.any())
    torch.testing.assert_close(flagged.curvature, torch.full((6,), -0.5, dtype=F64))
    with pytest.raises(OracleError, match="6 of them stationary but a saddle"):
        exact_oracle(m, p, perturbed, max_escapes=0)


def test_focal_distance_of_a_cylinder():
    m = Cylinder(2.0)
    p = m.sample(5, torch.Generator().manual_seed(1), dtype=F64)
    x, _ = m.jets(p)
    fd = focal_distance(x)
    torch.testing.assert_close(fd.distance, torch.full((5,), 2.0, dtype=F64))
    expected = -m.input(p, torch.zeros_like(p)) / 2.0
    expected[:, 2] = 0
    torch.testing.assert_close(fd.normal, expected)  # towards the axis


@pytest.fixture(scope="module")
def cube_focal():
    cube = Cube()
    p = cube.sample(4, torch.Generator().manual_seed(0), dtype=F64)
    x, y = cube.jets(p)
    return cube, p, x, y, focal_distance(x)


def test_cube_focal_distance_is_where_the_clean_point_stops_being_a_minimum(cube_focal):
    cube, p, x, y, fd = cube_focal
    assert bool(((fd.distance > 0.5) & (fd.distance < 1.0)).all()), fd.distance
    for f in (0.8, 1.2):
        s = (f * fd.distance).reshape(-1, 1, 1)
        hess = projection_hessian(x, x.value + s * fd.normal)
        jtj = projection_hessian(x, x.value)
        # the smallest eigenvalue relative to J^T J is 1 - s / focal distance
        r = torch.linalg.cholesky(jtj)
        rel = torch.linalg.solve_triangular(r, torch.linalg.solve_triangular(r, hess, upper=False).transpose(1, 2), upper=False)
        torch.testing.assert_close(torch.linalg.eigvalsh(rel)[:, 0], torch.full((4,), 1 - f, dtype=F64), atol=1e-6, rtol=0)


def test_cube_perturbation_past_the_focal_distance(cube_focal):
    """The reproduction of issue 24: along the normal of largest curvature, beyond the focal
    distance, the clean point is stationary but a saddle; the oracle must move off it."""
    cube, p, x, y, fd = cube_focal
    below = exact_oracle(cube, p, x.value + (0.8 * fd.distance).reshape(-1, 1, 1) * fd.normal)
    assert below.escapes.tolist() == [0] * 4
    torch.testing.assert_close(below.target, y.value, atol=1e-9, rtol=0)
    torch.testing.assert_close(below.curvature, torch.full((4,), 0.2, dtype=F64), atol=1e-6, rtol=0)
    s = 1.2 * fd.distance
    perturbed = x.value + s.reshape(-1, 1, 1) * fd.normal
    with pytest.raises(OracleError, match="saddle"):
        exact_oracle(cube, p, perturbed, max_escapes=0)
    result = exact_oracle(cube, p, perturbed)
    assert bool(result.converged.all()) and bool((result.escapes >= 1).all())
    assert bool((result.distance < s - 1e-3).all()), (result.distance, s)  # nearer than the clean point
    assert bool(((result.target - y.value).norm(dim=1) > 0.01).all())  # and a different answer
    xa, _ = cube.jets(result.points)
    assert bool((torch.linalg.eigvalsh(projection_hessian(xa, perturbed))[:, 0] > 0).all())  # a local minimum
    res = (perturbed - xa.value).reshape(4, -1)
    assert float((xa.d1.reshape(4, 6, -1) @ res.unsqueeze(-1)).abs().max()) < 1e-6 * float(res.norm(dim=1).min())


def fd_hessian(m, p, perturbed, h):
    """Central finite differences of 1/2 |x(p, theta) - perturbed|^2 at theta = 0."""
    n, d = p.shape[0], m.param_dim
    f = lambda t: 0.5 * (m.input(p, t) - perturbed).reshape(n, -1).pow(2).sum(1)  # noqa: E731
    e = torch.eye(d, dtype=F64)
    out = torch.zeros(n, d, d, dtype=F64)
    for i in range(d):
        for j in range(d):
            ti, tj = (h * e[i]).expand(n, d), (h * e[j]).expand(n, d)
            out[:, i, j] = (f(ti + tj) - f(ti - tj) - f(tj - ti) + f(-ti - tj)) / (4 * h * h)
    return out


@pytest.mark.parametrize("manifold", [Sphere(), Cube()], ids=["sphere", "cube"])
def test_projection_hessian_against_finite_differences(manifold):
    p = manifold.sample(3, torch.Generator().manual_seed(2), dtype=F64)
    x, _ = manifold.jets(p)
    perturbed = x.value + 0.3 * torch.randn(x.value.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    exact = projection_hessian(x, perturbed)
    approx = fd_hessian(manifold, p, perturbed, 1e-4)
    torch.testing.assert_close(exact, approx, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))
    torch.testing.assert_close(exact, exact.transpose(1, 2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.1))
def test_small_perturbations_give_the_gauss_newton_answer(seed, eps):
    """Where the perturbation is small against the curvature, the second-order test passes at
    once and the answer is the plain search's (``second_order_test=False``, the oracle before
    the test), bit for bit."""
    m = Sphere()
    g = torch.Generator().manual_seed(seed)
    p = m.sample(6, g, dtype=F64)
    x, _ = m.jets(p, order=1)
    perturbed = x.value + eps * torch.randn(x.value.shape, generator=g, dtype=F64)
    result = exact_oracle(m, p, perturbed)
    plain = exact_oracle(m, p, perturbed, start_jet=x, second_order_test=False)
    assert plain.minimum is None and plain.curvature is None and plain.escapes is None
    assert result.escapes.tolist() == [0] * 6 and bool(result.minimum.all())
    assert torch.equal(result.points, plain.points)
    assert torch.equal(result.distance, plain.distance)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.floats(0.01, 0.3))
def test_small_perturbations_of_the_cube_give_the_gauss_newton_answer(seed, size):
    cube = Cube()
    g = torch.Generator().manual_seed(seed)
    p = cube.sample(2, g, dtype=F64)
    x, _ = cube.jets(p, order=1)
    d = torch.randn(x.value.shape, generator=g, dtype=F64)
    perturbed = x.value + size * d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    result = exact_oracle(cube, p, perturbed, start_jet=x)
    plain = exact_oracle(cube, p, perturbed, start_jet=x, second_order_test=False)
    assert result.escapes.tolist() == [0, 0] and bool(result.converged.all())
    assert torch.equal(result.points, plain.points)


def test_exact_oracle_second_order_bad_input():
    m = Cylinder()
    p = m.sample(2, torch.Generator().manual_seed(0), dtype=F64)
    x, _ = m.jets(p, order=1)
    with pytest.raises(ValueError, match="max_escapes: expected an int >= 0"):
        exact_oracle(m, p, x.value, max_escapes=-1)
    with pytest.raises(ValueError, match="curvature_tol"):
        exact_oracle(m, p, x.value, curvature_tol=-1.0)
    with pytest.raises(ValueError, match="inputs: expected the input's jet of order 2"):
        projection_hessian(x, x.value)
    with pytest.raises(ValueError, match="inputs: expected the input's jet of order 2"):
        focal_distance(x)
    x2, _ = m.jets(p)
    with pytest.raises(ValueError, match=r"perturbed: expected shape \[2, 3\]"):
        projection_hessian(x2, x.value[:, :2])


def test_noisy_rmse_converges_where_the_noise_passes_the_axis():
    """Gauss-Newton alone stalls when the distance passes the radius of curvature (10 of these
    16 samples did not converge before the Newton retry)."""
    from manifoldtrain.data import generate_jets

    m = Cylinder(0.3)
    data = generate_jets(m, 16, seed=0, order=1, dtype=F64, progress=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), Tanh(), torch.nn.Linear(5, 3)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = noisy_rmse(model, m, data, (0.5, 0.01))
    assert out[0.5]["failed"] == 0 and out[0.01]["failed"] == 0 and out[0.01]["focal"] == 0


def test_evaluation_counts_and_warns_about_answers_past_a_focal_point(monkeypatch):
    """Random noise lands exactly on a saddle with probability 0; an oracle that reports one
    escape shows how the counts and the warning carry it."""
    import attrs

    from manifoldtrain.data import generate_jets
    from manifoldtrain.robustness import adversarial_error, evaluate_robustness
    from manifoldtrain.robustness import evaluation

    def one_escape(*args, **kwargs):
        res = exact_oracle(*args, **kwargs)
        escapes = res.escapes.clone()
        escapes[0] = 1
        return attrs.evolve(res, escapes=escapes)

    monkeypatch.setattr(evaluation, "exact_oracle", one_escape)
    m = Cylinder(1.0)
    data = generate_jets(m, 6, seed=0, order=1, dtype=F64, progress=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), Tanh(), torch.nn.Linear(5, 3)).double()
    with pytest.warns(UserWarning, match="1 of 6 perturbed inputs passed a focal point"):
        out = noisy_rmse(model, m, data, (0.01,))
    assert out[0.01]["focal"] == 1 and out[0.01]["failed"] == 0
    with pytest.warns(UserWarning, match="adversarial_error: at budget 0.1, 1 of 6 perturbed inputs passed a focal point"):
        adv = adversarial_error(model, m, data, (0.1,), steps=1)
    assert adv[0.1]["focal"] == 1
    with pytest.warns(UserWarning, match="passed a focal point"):
        metrics = evaluate_robustness(model, m, data, noise_levels=(0.01,), budgets=(0.1,), steps=1)
    assert metrics.oracle_focal == 2 and metrics.to_dict()["oracle_focal"] == 2


def test_the_plain_search_misses_the_saddle_the_test_escapes():
    """Past the focal distance along the normal, the plain search (``second_order_test=False``)
    stays at the clean point and calls it converged; the default search escapes."""
    m = Cylinder()
    p = m.sample(3, torch.Generator().manual_seed(1), dtype=F64)
    x2, _ = m.jets(p, order=2)
    fd = focal_distance(x2)
    perturbed = x2.value + (1.5 * fd.distance).reshape(-1, *([1] * (x2.value.dim() - 1))) * fd.normal
    plain = exact_oracle(m, p, perturbed, second_order_test=False)
    full = exact_oracle(m, p, perturbed)
    assert bool(plain.converged.all()) and torch.allclose(plain.points, p)
    assert bool((full.escapes > 0).all()) and bool((full.distance < plain.distance - 1e-6).all())
    with pytest.raises(TypeError, match="second_order_test"):
        exact_oracle(m, p, perturbed, second_order_test=1)
