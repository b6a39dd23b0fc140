"""The oracle, the error operator, the robustness terms and the robustness evaluation."""

import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldtrain.jet import Jet
from manifoldtrain.nn import Tanh
from manifoldtrain.objectives import (
    AdversarialInvarianceTerm, HessianOracleTerm, JacobianInvarianceTerm, LossScales, NoiseInvarianceTerm, Objective,
    OracleTerm, ValueTerm,
)
from manifoldtrain.objectives.robust import pgd_perturbations
from manifoldtrain.robustness import (
    ErrorOperator, LinearisedOracle, OracleError, exact_oracle, spectral_norm, taylor_oracle,
)
from toy_manifolds import Sphere

F64 = torch.float64


@pytest.fixture(scope="module")
def sphere_data():
    m = Sphere()
    g = torch.Generator().manual_seed(0)
    p = m.sample(12, g, dtype=F64)
    x, y = m.jets(p)
    return m, p, x, y


def small_model(seed=0, out=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), Tanh(), torch.nn.Linear(7, out)).double()


def explicit_error(model, x, y):
    """N'(x) - Y J^+ from the full Jacobian and an explicit pseudo-inverse (the slow, obvious way)."""
    jn = torch.func.vmap(torch.func.jacrev(model))(x.value).detach()
    jac = x.d1.transpose(1, 2)
    return jn - y.d1.transpose(1, 2) @ torch.linalg.pinv(jac), jac @ torch.linalg.pinv(jac)


# --- the oracle -------------------------------------------------------------------------------


def test_exact_oracle_recovers_theta_on_the_manifold(sphere_data):
    m, p, x, y = sphere_data
    theta = 0.05 * torch.randn(len(p), 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    result = exact_oracle(m, p, m.input(p, theta))
    assert bool(result.converged.all())
    torch.testing.assert_close(result.points, p + theta, atol=1e-8, rtol=0)
    torch.testing.assert_close(result.target, m.target(p, theta), atol=1e-8, rtol=0)
    assert float(result.distance.max()) < 1e-8


def test_taylor_oracle_converges_at_its_order(sphere_data):
    """Errors against the exact oracle shrink like |delta|^2 (order 1) and |delta|^3 (order 2)."""
    m, p, x, y = sphere_data
    direction = torch.randn(len(p), 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    errors = {1: [], 2: []}
    scales = [0.08, 0.04, 0.02, 0.01]
    for eps in scales:
        delta = eps * direction
        exact = exact_oracle(m, p, x.value + delta, tol=1e-13).target
        for order in (1, 2):
            errors[order].append(float((taylor_oracle(x, y, delta, order) - exact).norm(dim=1).max()))
    for order in (1, 2):
        rates = [math.log2(a / b) for a, b in zip(errors[order], errors[order][1:])]
        assert all(order + 1 - 0.3 < r < order + 1 + 0.5 for r in rates), (order, errors[order], rates)
    assert errors[2][-1] < errors[1][-1] / 20


def test_linearised_oracle_against_pinv(sphere_data):
    m, p, x, y = sphere_data
    oracle = LinearisedOracle(x, y)
    delta = torch.randn(len(p), 3, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    pinv = torch.linalg.pinv(x.d1.transpose(1, 2))  # [n, d, 5]
    theta = torch.einsum("ndi,nki->nkd", pinv, delta)
    torch.testing.assert_close(oracle.coordinates(delta), theta)
    torch.testing.assert_close(oracle.first(delta), torch.einsum("nkd,ndm->nkm", theta, y.d1))
    w = torch.randn(len(p), 2, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    full = y.d1.transpose(1, 2) @ pinv  # [n, 3, 5]
    torch.testing.assert_close(oracle.first_transpose(w), torch.einsum("nmi,nkm->nki", full, w))
    torch.testing.assert_close(oracle.tangent_part(delta), torch.einsum("nij,nkj->nki", x.d1.transpose(1, 2) @ pinv, delta))


def test_oracle_is_the_same_in_scaled_coordinates(sphere_data):
    """Y J^+ does not depend on the units of theta (the trainer works in scaled coordinates)."""
    m, p, x, y = sphere_data
    scales = LossScales((3.0, 0.2), (1.0, 1.0, 1.0))
    delta = torch.randn(len(p), 2, 5, dtype=F64, generator=torch.Generator().manual_seed(5))
    plain, scaled = LinearisedOracle(x, y), LinearisedOracle(scales.scale_jet(x), scales.scale_jet(y))
    torch.testing.assert_close(plain.first(delta), scaled.first(delta))
    torch.testing.assert_close(plain.second(delta), scaled.second(delta))


def test_exact_oracle_never_returns_a_non_converged_answer_silently(sphere_data):
    m, p, x, y = sphere_data
    noisy = x.value + 0.2 * torch.randn(x.value.shape, dtype=F64, generator=torch.Generator().manual_seed(6))
    with pytest.raises(OracleError, match="did not converge for"):
        exact_oracle(m, p, noisy, max_iter=1, tol=1e-14)
    result = exact_oracle(m, p, noisy, max_iter=1, tol=1e-14, strict=False)
    assert not bool(result.converged.all())


@pytest.mark.parametrize("bad, match", [
    (lambda x: x[:, :4], r"perturbed: expected shape \[12, 5\]"),
    (lambda x: x.float(), "perturbed: expected dtype torch.float64"),
    (lambda x: x * float("nan"), "perturbed: expected finite values"),
])
def test_exact_oracle_bad_input(sphere_data, bad, match):
    m, p, x, y = sphere_data
    with pytest.raises((ValueError, TypeError), match=match):
        exact_oracle(m, p, bad(x.value))


def test_taylor_oracle_bad_input(sphere_data):
    m, p, x, y = sphere_data
    with pytest.raises(ValueError, match=r"delta: expected shape \[12, 5\]"):
        taylor_oracle(x, y, torch.zeros(12, 4, dtype=F64))
    with pytest.raises(ValueError, match="order"):
        taylor_oracle(x, y, torch.zeros(12, 5, dtype=F64), order=3)
    flat = Jet(x.value, torch.zeros_like(x.d1))
    with pytest.raises(ValueError, match="linearly dependent"):
        LinearisedOracle(flat, y.truncate(1))


# --- the error operator -----------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_error_operator_against_the_explicit_matrix(sphere_data, seed):
    m, p, x, y = sphere_data
    model = small_model(seed)
    full, tangent = explicit_error(model, x, y)
    op = ErrorOperator(model, x, y)
    torch.testing.assert_close(op.matrix(), full)
    eye = torch.eye(5, dtype=F64)
    torch.testing.assert_close(op.invariance_part().matrix(), full @ tangent)
    torch.testing.assert_close(op.sensitivity_part().matrix(), full @ (eye - tangent))
    for operator, matrix in ((op, full), (op.invariance_part(), full @ tangent), (op.sensitivity_part(), full @ (eye - tangent))):
        result = spectral_norm(operator)
        torch.testing.assert_close(result.value, torch.linalg.matrix_norm(matrix, 2))
        v = result.vectors[:, :1]
        torch.testing.assert_close(operator.apply(v)[:, 0].norm(dim=1), result.value)  # the worst-case direction


def test_spectral_norm_converges_with_a_small_block(sphere_data):
    m, p, x, y = sphere_data
    model = small_model(1)
    full, _ = explicit_error(model, x, y)
    result = spectral_norm(ErrorOperator(model, x, y), block=1, iterations=500, tol=1e-13)
    torch.testing.assert_close(result.value, torch.linalg.matrix_norm(full, 2), atol=1e-8, rtol=1e-8)


def test_error_operator_bad_input(sphere_data):
    m, p, x, y = sphere_data
    with pytest.raises(TypeError, match="inputs: expected dtype torch.float32"):
        ErrorOperator(small_model().float(), x, y)
    op = ErrorOperator(small_model(), x, y)
    with pytest.raises(ValueError, match=r"v: expected shape \[12, \*, 5\]"):
        op.apply(torch.zeros(12, 5, dtype=F64))


# --- the robustness terms ---------------------------------------------------------------------


def draws(term, model, x, y, n_draws, seed=0, replicate=25):
    """The term's raw loss (weight 1, normaliser 1) on the same batch, ``n_draws`` values each the
    mean of ``replicate`` independent draws (the batch repeated: every copy draws its own)."""
    objective = Objective((term,))
    scales = LossScales.from_data(x, y)
    index = torch.arange(len(x)).repeat(replicate)
    x, y = x[index], y[index]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_draws):
        losses = objective.losses(model, x, y, scales, generator=g, scaled=True, normalisers={term.name: 1.0})
        out.append(float(losses[term.name].detach()))
    return torch.tensor(out, dtype=F64)


def assert_mean(values, exact, sigmas=4.0):
    mean, se = float(values.mean()), float(values.std() / math.sqrt(len(values)))
    assert abs(mean - exact) < sigmas * se + 1e-12, (mean, exact, se)
    return mean, se


@pytest.mark.parametrize("k", [1, 3])
def test_jacobian_invariance_term_is_unbiased(sphere_data, k):
    m, p, x, y = sphere_data
    model = small_model(2)
    sigma = 0.3
    jn = torch.func.vmap(torch.func.jacrev(model))(x.value).detach()
    exact = sigma**2 * float(jn.pow(2).sum()) / (len(p) * 3)
    values = draws(JacobianInvarianceTerm(sigma, directions=k), model, x, y.truncate(1), 24)
    _, se = assert_mean(values, exact)
    assert se < 0.05 * exact  # the test has power to see a bias of a few per cent


@pytest.mark.parametrize("k", [1, 3])
def test_oracle_term_is_unbiased(sphere_data, k):
    m, p, x, y = sphere_data
    model = small_model(3)
    sigma = 0.2
    full, _ = explicit_error(model, x, y)
    exact = sigma**2 * float(full.pow(2).sum()) / (len(p) * 3)
    values = draws(OracleTerm(sigma, directions=k), model, x, y, 24)
    _, se = assert_mean(values, exact)
    assert se < 0.05 * exact
    # An invariance penalty of the same strength estimates something else: it must fail this test.
    wrong = draws(JacobianInvarianceTerm(sigma, directions=k), model, x, y, 24)
    assert abs(float(wrong.mean()) - exact) > 6 * float(wrong.std() / math.sqrt(24))


def test_noise_invariance_term_is_value_loss_plus_jacobian_penalty(sphere_data):
    """For a linear network E||N(x + s g) - y||^2 = ||N(x) - y||^2 + s^2 ||N'||_F^2 exactly."""
    m, p, x, y = sphere_data
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
    sigma = 0.3
    w = model[0].weight.detach()
    exact = float((model(x.value) - y.value).pow(2).mean().detach()) + sigma**2 * float(w.pow(2).sum()) / 3
    values = draws(NoiseInvarianceTerm(sigma, samples=2), model, x.truncate(0), y.truncate(0), 24)
    _, se = assert_mean(values, exact)
    assert se < 0.05 * exact


def test_order_two_oracle_term_per_draw(sphere_data):
    """Each draw of the order-2 oracle term equals the explicit formula on the same perturbation:
    N'd + 1/2 N''[d, d] (full Jacobian and Hessian) against the second-order Taylor oracle."""
    m, p, x, y = sphere_data
    model = small_model(5)
    sigma, k = 0.05, 2
    term = OracleTerm(sigma, directions=k, order=2)
    scales = LossScales.from_data(x, y)
    got = Objective((term,)).losses(model, x, y, scales, generator=torch.Generator().manual_seed(7),
                                    scaled=True, normalisers={term.name: 1.0})[term.name]
    delta = sigma * torch.randn(len(p), k, 5, generator=torch.Generator().manual_seed(7), dtype=F64)
    jn = torch.func.vmap(torch.func.jacrev(model))(x.value).detach()
    hn = torch.func.vmap(torch.func.hessian(model))(x.value).detach()  # [n, 3, 5, 5]
    change = torch.einsum("nmi,nki->nkm", jn, delta) + 0.5 * torch.einsum("nmij,nki,nkj->nkm", hn, delta, delta)
    want = (change - LinearisedOracle(x, y).second(delta)).pow(2).mean()
    torch.testing.assert_close(got.detach(), want)


def test_hessian_oracle_term_finds_the_worst_direction(sphere_data):
    m, p, x, y = sphere_data
    model = small_model(6)
    sigma = 0.1
    full, _ = explicit_error(model, x, y)
    top = torch.linalg.matrix_norm(full, 2)
    term = HessianOracleTerm(sigma, directions=1, iterations=60)
    values = draws(term, model, x, y.truncate(1), 3, replicate=1)
    exact = sigma**2 * float(top.pow(2).mean()) / 3
    torch.testing.assert_close(values, torch.full_like(values, exact), rtol=1e-6, atol=0)


def test_adversarial_invariance_term_nears_the_worst_case_of_a_linear_network(sphere_data):
    """For N(x) = Wx + b fitted exactly (y = N(x)) the worst perturbation in the L2 ball of radius
    eps is eps times W's top right singular vector, a loss of eps^2 s_1(W)^2 / m: the term never
    exceeds it, and with a clear spectral gap (singular values 2, 0.5, 0.2) three steps of
    projected gradient ascent from a random start come within 5% of it (Madry's step rule,
    2.5 eps / steps, approaches it, not exactly: 1% off at 40 steps). No steps, the random start
    alone, finds much less."""
    m, p, x, y = sphere_data
    g = torch.Generator().manual_seed(9)
    u, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=F64))
    model = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        model.weight.copy_(u @ torch.diag(torch.tensor([2.0, 0.5, 0.2], dtype=F64)) @ v.T)
    eps = 0.4
    fitted = Jet(model(x.value).detach())
    worst = eps**2 * 2.0**2 / 3
    found = draws(AdversarialInvarianceTerm(eps, steps=3), model, x.truncate(0), fitted, 4, replicate=4)
    assert float(found.max()) <= worst * (1 + 1e-9)
    assert float(found.min()) >= 0.95 * worst, (found, worst)
    start = draws(AdversarialInvarianceTerm(eps, steps=0), model, x.truncate(0), fitted, 4, replicate=4)
    assert float(start.max()) < 0.6 * worst


@given(seed=st.integers(0, 2**16), radius=st.floats(0.01, 2.0), steps=st.integers(0, 6))
@settings(max_examples=20, deadline=None)
def test_pgd_perturbations_stay_in_the_ball_and_beat_random_ones(seed, radius, steps):
    """Every perturbation lies in its sample's ball; with three steps or more it is on the sphere,
    its error beats a typical random direction on the sphere (the median of 64) for every
    sample, and over the batch comes within 10% of the best of the 64 (a few steps from a random
    start on a non-linear network with a fitting error can stop at a lesser local maximum)."""
    model = small_model(seed % 5)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=F64)
    y = torch.randn(6, 3, generator=g, dtype=F64)
    delta = pgd_perturbations(model, x, y, radius, steps, torch.Generator().manual_seed(seed))
    assert delta.shape == x.shape and delta.dtype == x.dtype and not delta.requires_grad
    norms = delta.norm(dim=1)
    assert bool((norms <= radius * (1 + 1e-12)).all())
    if steps >= 3:
        torch.testing.assert_close(norms, torch.full_like(norms, radius))
        with torch.no_grad():
            found = (model(x + delta) - y).pow(2).sum(1)
            r = torch.randn(64, 6, 5, generator=g, dtype=F64)
            r = radius * r / r.norm(dim=2, keepdim=True)
            errors = (model(x + r) - y).pow(2).sum(2)
        assert bool((found >= errors.median(0).values).all()), (found, errors.median(0).values)
        assert float(found.sum()) >= 0.9 * float(errors.max(0).values.sum()), (found, errors.max(0).values)


def test_pgd_perturbations_check_their_arguments():
    model = small_model(1)
    x, y = torch.zeros(4, 5, dtype=F64), torch.zeros(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="radius"):
        pgd_perturbations(model, x, y, float("nan"), 2)
    with pytest.raises(ValueError, match="steps"):
        pgd_perturbations(model, x, y, 0.1, -1)
    with pytest.raises(ValueError, match=r"x, y: expected tensors .* the same n"):
        pgd_perturbations(model, x, y[:3], 0.1, 2)


def test_pgd_perturbations_follow_the_input_dtype_and_leave_the_parameters_alone():
    model = small_model(1).float()
    x, y = torch.randn(4, 5), torch.randn(4, 3)
    delta = pgd_perturbations(model, x, y, 0.5, 2, torch.Generator().manual_seed(0))
    assert delta.dtype == torch.float32
    assert all(p.grad is None for p in model.parameters())


def test_robust_terms_train_through_the_objective(sphere_data):
    """Gradients reach the parameters through every robust term (one shared pass)."""
    m, p, x, y = sphere_data
    model = small_model(7)
    terms = (ValueTerm(), NoiseInvarianceTerm(0.1), AdversarialInvarianceTerm(0.3), JacobianInvarianceTerm(0.1, directions=2),
             OracleTerm(0.1, directions=2), OracleTerm(0.1, order=2), HessianOracleTerm(0.1))
    objective = Objective(terms)
    scales = LossScales.from_data(x, y)
    losses = objective.losses(model, x, y, scales, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {t.name for t in terms}
    assert all(p.grad is None for p in model.parameters())  # the attack's ascent leaves none behind
    total = sum(losses.values())
    total.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert all(float(v.detach()) > 0 for v in losses.values())


@pytest.mark.parametrize("cls", [NoiseInvarianceTerm, AdversarialInvarianceTerm, JacobianInvarianceTerm, OracleTerm,
                                 HessianOracleTerm])
@pytest.mark.parametrize("strength, error", [(-0.1, ValueError), (0.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError)])
def test_robust_term_strength_is_checked(cls, strength, error):
    with pytest.raises(error, match="strength"):
        cls(strength)


# --- evaluation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sphere_set():
    from manifoldtrain.data import generate_jets

    return generate_jets(Sphere(), 10, seed=3, order=2, dtype=F64, progress=False)


def test_amplification_matches_the_explicit_operator(sphere_set):
    from manifoldtrain.robustness import amplification

    model = small_model(8)
    full, tangent = explicit_error(model, sphere_set.inputs, sphere_set.targets)
    amp = amplification(model, sphere_set, batch_size=4)
    torch.testing.assert_close(amp.full, torch.linalg.matrix_norm(full, 2))
    torch.testing.assert_close(amp.invariance, torch.linalg.matrix_norm(full @ tangent, 2))
    torch.testing.assert_close(amp.sensitivity, torch.linalg.matrix_norm(full @ (torch.eye(5, dtype=F64) - tangent), 2))
    assert amp.medians()["amplification"] == pytest.approx(float(amp.full.median()))


def test_noisy_rmse_and_adversarial_error(sphere_set):
    from manifoldtrain.robustness import adversarial_error, noisy_rmse

    m, model = Sphere(), small_model(9)
    with torch.no_grad():
        clean = float((model(sphere_set.inputs.value) - sphere_set.targets.value).pow(2).mean().sqrt())
    noisy = noisy_rmse(model, m, sphere_set, (0.0, 0.01))
    assert noisy[0.0]["oracle"] == pytest.approx(clean) and noisy[0.0]["clean"] == pytest.approx(clean)
    assert noisy[0.01]["failed"] == 0 and abs(noisy[0.01]["oracle"] - clean) < 0.05
    adv = adversarial_error(model, m, sphere_set, (0.0, 0.02, 0.05), steps=4)
    assert adv[0.0]["rms"] == pytest.approx(clean)
    assert clean < adv[0.02]["rms"] < adv[0.05]["rms"]
    # Gradient ascent keeps the best perturbation: never below the linear worst-case start.
    assert adversarial_error(model, m, sphere_set, (0.05,), steps=4)[0.05]["rms"] >= adversarial_error(
        model, m, sphere_set, (0.05,), steps=0)[0.05]["rms"] - 1e-12


@pytest.mark.parametrize("call, match", [
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).noisy_rmse(mod, m, d, (-0.1,)), "levels: expected finite numbers >= 0"),
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).noisy_rmse(mod, m, d, (float("nan"),)), "levels"),
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).adversarial_error(mod, m, d, (float("inf"),)), "budgets"),
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).evaluate_robustness(mod, m, d, budgets=(-1,)), "budgets"),
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).Robustness(m, samples=0), "samples: expected an int >= 1"),
    (lambda mod, m, d: __import__("manifoldtrain.robustness", fromlist=["x"]).Robustness(m, steps=-1), "steps: expected an int >= 0"),
])
def test_robustness_evaluation_bad_levels(sphere_set, call, match):
    with pytest.raises(ValueError, match=match):
        call(small_model(), Sphere(), sphere_set)


def test_robustness_evaluation_rejects_data_of_another_manifold(sphere_set):
    from manifoldtrain.manifolds import Cube
    from manifoldtrain.robustness import noisy_rmse

    with pytest.raises(ValueError, match="data: .* do not fit Cube"):
        noisy_rmse(small_model(), Cube(), sphere_set, (0.01,))


def test_robustness_metric_in_the_trainer(sphere_set):
    from manifoldtrain.evaluation import JetRMSE
    from manifoldtrain.robustness import Robustness
    from manifoldtrain.training import TrainConfig, Trainer

    train, test = sphere_set.split(4, seed=0)
    model = small_model(10)
    trainer = Trainer(model, Objective((ValueTerm(), OracleTerm(0.05))), train, test,
                      TrainConfig(epochs=2, batch_size=3, progress=False),
                      metrics=[JetRMSE(), Robustness(Sphere(), noise_levels=(0.01,), budgets=(0.02,), samples=4, steps=1)])
    history = trainer.fit()
    last = history.records[-1]["test"]
    assert {"rmse", "amplification", "invariance_part", "sensitivity_part", "noisy_rmse@0.01", "adversarial@0.02"} <= set(last)
    assert all(math.isfinite(v) for v in last.values() if v is not None)


def test_suite_results_figures_and_resume(tmp_path):
    from manifoldtrain.robustness.suite import SuiteConfig, run_suite

    from manifoldtrain.objectives import NoiseInvarianceTerm, Objective, ValueTerm
    from manifoldtrain.robustness.suite import SuiteObjective

    # An objective of one's own joins the comparison on the invariance side.
    # Its strengths are a sweep of its own (as invariance-adversarial's L2 radii), not the family's.
    mine = SuiteObjective("noise-x2", lambda s: Objective((ValueTerm(), NoiseInvarianceTerm(s, weight=2.0))),
                          family="invariance", strengths=(0.05,))
    config = SuiteConfig(manifold="toy_manifolds:SettingsSphere", n_train=40, n_test=6, widths=(8,), depth=1, seconds_per_run=0.3,
                         objectives=("value", "invariance-jacobian", mine, "oracle-hessian"),
                         invariance_strengths=(0.03,), noise_levels=(0.01,), budgets=(0.02,), eval_samples=4,
                         attack_samples=2, attack_steps=1, dtype="float64", progress=False)
    lines = []
    results = run_suite(tmp_path / "rob", config, echo=lines.append)
    runs = results["runs"]
    assert [r["objective"] for r in runs] == ["value", "invariance-jacobian", "noise-x2", "oracle-hessian"]
    assert [r["strength"] for r in runs] == [None, 0.03, 0.05, 1.0]
    assert results["config"]["objectives"][2]["strengths"] == [0.05]
    assert [r["family"] for r in runs] == [None, "invariance", "invariance", "oracle"]
    invariance = [r for r in runs if r["family"] == "invariance"]
    # Chosen on the selection split (test samples 4 and 5), scored on the first four.
    assert all(r["selection_rmse"] is not None and r["selection_amplification"] > 0 for r in runs)
    best = min(invariance, key=lambda r: r["selection_rmse"])
    (key,) = [k for k in results["summary"] if "clean RMSE" in k]
    assert key.startswith(f"w8: clean RMSE, {best['objective']}-w8-s{best['strength']:g} / oracle-hessian-w8-s1")
    assert results["summary"][key] == best["test_rmse"] / runs[-1]["test_rmse"]
    assert results["summary"]["w8: chosen on"].startswith("the selection split")
    assert results["reference_amplification"] > 0
    assert results["pareto"]["w8 oracle"] == ["oracle-hessian-w8-s1"]
    assert set(results["pareto"]["w8 invariance"]) <= {"invariance-jacobian-w8-s0.03", "noise-x2-w8-s0.05"}
    assert (tmp_path / "rob" / "runs" / "noise-x2-w8-s0.05" / "checkpoint.pt").is_file()
    for r in runs:
        assert {"objective", "width", "strength", "test_rmse", "amplification", "invariance_part", "sensitivity_part",
                "noisy_rmse", "adversarial_error"} <= set(r)
        assert set(r["noisy_rmse"]) == {"0.01"} and set(r["adversarial_error"]) == {"0.02"}
        assert (r["strength"] is None) == (r["objective"] == "value")
    saved = __import__("json").loads((tmp_path / "rob" / "results.json").read_text())
    assert saved["runs"] == runs
    assert saved["config"]["objectives"][:2] == ["value", "invariance-jacobian"]
    assert saved["config"]["objectives"][2]["name"] == "noise-x2" and saved["config"]["objectives"][2]["family"] == "invariance"
    assert saved["config"]["objectives"][2]["build"].startswith("test_robustness:")
    assert (tmp_path / "rob" / "tradeoff.png").stat().st_size > 0 and (tmp_path / "rob" / "worst_case.png").stat().st_size > 0
    # Stopped and started again: finished runs are neither retrained nor re-scored.
    lines.clear()
    again = run_suite(tmp_path / "rob", config, echo=lines.append)
    assert again["runs"] == runs
    assert not any("evaluating robustness" in line for line in lines)


def test_suite_config_errors():
    from manifoldtrain.robustness.suite import SuiteConfig, robustness_objective

    with pytest.raises(ValueError, match="objectives: expected names among"):
        SuiteConfig(objectives=("value", "adversarial"))
    with pytest.raises(ValueError, match="budgets: expected finite numbers >= 0"):
        SuiteConfig(budgets=(-0.3,))
    with pytest.raises(ValueError, match="invariance_strengths"):
        SuiteConfig(invariance_strengths=(0.0,))
    with pytest.raises(ValueError, match="manifold: kind: unknown manifold"):
        SuiteConfig(manifold="sphere-of-nowhere")
    with pytest.raises(ValueError, match=r"dtype: expected one of \['float32', 'float64'\], got 'float16'"):
        SuiteConfig(dtype="float16")
    with pytest.raises(TypeError, match="strength"):
        robustness_objective("oracle-random", None)
    with pytest.raises(ValueError, match="strength: 'value' has no family, so it trains without a strength"):
        robustness_objective("value", 0.1)
    from manifoldtrain.robustness.suite import SuiteObjective

    value = lambda s: __import__("manifoldtrain").objectives.Objective.value()  # noqa: E731
    with pytest.raises(ValueError, match="objectives: two objectives are called 'value'"):
        SuiteConfig(objectives=("value", SuiteObjective("value", value)))
    with pytest.raises(ValueError, match=r"family: expected one of \['invariance', 'oracle'\] or None, got 'robust'"):
        SuiteObjective("mine", value, family="robust")
    with pytest.raises(TypeError, match="build: expected a callable strength -> Objective, got str"):
        SuiteObjective("mine", "value")
    with pytest.raises(ValueError, match="name: expected a non-empty name usable in a folder name, got 'a/b'"):
        SuiteObjective("a/b", value)
    with pytest.raises(TypeError, match="build: the objective 'mine' built float, expected an Objective"):
        SuiteObjective("mine", lambda s: 1.0, family="oracle").objective(0.1)
    with pytest.raises(ValueError, match="objective: this config has no objective 'second'"):
        SuiteConfig().objective("second")
    with pytest.raises(TypeError, match="objectives: expected names among .* got list"):
        SuiteConfig(objectives=(["value"],))
    with pytest.raises(TypeError, match="name: expected a str, got NoneType"):
        SuiteObjective(None, value)
    with pytest.raises(ValueError, match="strengths: 'mine' has no family, so it trains once without a strength"):
        SuiteObjective("mine", value, strengths=(0.1,))
    with pytest.raises(ValueError, match=r"strengths: expected at least one strength, each > 0, got \(0.0,\)"):
        SuiteObjective("mine", value, family="invariance", strengths=(0.0,))
    # The bundled adversarial baseline sweeps its own L2 radii, whatever the noise levels.
    assert [s for o, _, s in SuiteConfig(invariance_strengths=(0.01,)).runs() if o == "invariance-adversarial"] == [0.1, 0.3]
    with pytest.raises(TypeError, match="the oracle objective 'oracle-random' trains at a strength"):
        robustness_objective("oracle-random", None)
    # The bundled objectives stay callables strength -> Objective, as they were.
    from manifoldtrain.robustness.suite import OBJECTIVES

    assert OBJECTIVES["invariance-noise"](0.1) == robustness_objective("invariance-noise", 0.1)


def test_summary_takes_each_runs_family_from_its_record_or_else_by_name():
    from manifoldtrain.robustness.suite import SuiteConfig, summarise

    def run(objective, rmse, **extra):
        return dict(objective=objective, width=8, strength=0.1, test_rmse=rmse, amplification=rmse,
                    adversarial_error={"0.3": rmse}, **extra)

    config = SuiteConfig(objectives=("value",), widths=(8,))  # lists neither objective of the runs
    old = [run("invariance-noise", 1.0), run("oracle-random", 0.5)]  # records written before families
    assert summarise(old, config)["w8: clean RMSE, invariance-noise-w8-s0.1 / oracle-random-w8-s0.1"] == 2.0
    assert summarise(old, config)["w8: chosen on"] == "the scoring samples (no selection split recorded)"
    mine = [run("mine", 3.0, family="invariance"), run("oracle-random", 0.5, family="oracle")]
    assert summarise(mine, config)["w8: amplification, mine-w8-s0.1 / oracle-random-w8-s0.1"] == 6.0
    assert summarise([run("unknown", 1.0), run("oracle-random", 0.5)], config) == {}  # no invariance side


def test_summary_scores_one_oracle_network_on_both_axes_chosen_on_the_selection_split():
    from manifoldtrain.robustness.suite import SuiteConfig, pareto_fronts, summarise

    def run(objective, strength, family, rmse, amp, sel_rmse, sel_amp):
        return dict(objective=objective, width=8, strength=strength, family=family, test_rmse=rmse, amplification=amp,
                    adversarial_error={"0.3": amp / 10}, selection_rmse=sel_rmse, selection_amplification=sel_amp)

    runs = [
        run("invariance-noise", 0.01, "invariance", 1.0, 4.0, 1.0, 4.0),
        run("invariance-noise", 0.1, "invariance", 0.9, 3.0, 1.1, 3.0),   # best on test RMSE, not on selection
        run("invariance-jacobian", 0.3, "invariance", 2.0, 1.0, 2.0, 1.0),
        run("oracle-hessian", 0.3, "oracle", 0.2, 2.0, 0.2, 2.0),         # the most accurate oracle network
        run("oracle-hessian", 1.0, "oracle", 0.5, 0.5, 0.5, 0.5),         # the most robust: the one scored
    ]
    summary = summarise(runs, SuiteConfig(widths=(8,)))
    # The accuracy ratio and the robustness ratios come from the same oracle network.
    assert summary["w8: clean RMSE, invariance-noise-w8-s0.01 / oracle-hessian-w8-s1"] == 1.0 / 0.5
    assert summary["w8: amplification, invariance-jacobian-w8-s0.3 / oracle-hessian-w8-s1"] == 1.0 / 0.5
    assert summary["w8: adversarial error at 0.3, invariance-jacobian-w8-s0.3 / oracle-hessian-w8-s1"] == 2.0
    assert summary["w8: oracle network dominated by"] == "none"
    # A more robust oracle network that is less accurate than the most accurate invariance one is not the one.
    runs.append(run("oracle-random", 1.0, "oracle", 3.0, 0.1, 3.0, 0.1))
    assert "w8: amplification, invariance-jacobian-w8-s0.3 / oracle-hessian-w8-s1" in summarise(runs, SuiteConfig(widths=(8,)))
    runs.pop()
    runs.append(run("invariance-jacobian", 1.0, "invariance", 0.4, 0.4, 9.0, 9.0))
    assert summarise(runs, SuiteConfig(widths=(8,)))["w8: oracle network dominated by"] == "invariance-jacobian-w8-s1"
    fronts = pareto_fronts(runs, SuiteConfig(widths=(8,)))
    assert fronts["w8 oracle"] == ["oracle-hessian-w8-s0.3", "oracle-hessian-w8-s1"]
    assert fronts["w8 invariance"] == ["invariance-jacobian-w8-s1"]


def test_invariant_amplification_is_the_norm_of_the_oracle_derivative():
    from manifoldtrain.data import generate_jets
    from manifoldtrain.robustness import invariant_amplification

    data = generate_jets(Sphere(), 6, order=1, seed=3, dtype=torch.float64, progress=False)
    ref = invariant_amplification(data)
    # ||Y J^+||_2 per sample, from the dense matrices: J [d, P], Y [d, m], Y J^+ = Y^T pinv(J^T).
    J = data.inputs.d1.flatten(2)
    Y = data.targets.d1.flatten(2)
    dense = torch.linalg.matrix_norm(Y.transpose(1, 2) @ torch.linalg.pinv(J.transpose(1, 2)), ord=2)
    torch.testing.assert_close(ref.full, dense, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ref.invariance, dense, rtol=1e-6, atol=1e-9)
    assert float(ref.sensitivity.abs().max()) < 1e-6


# --- command line -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory):
    from manifoldtrain.config import DataConfig, ExperimentConfig
    from manifoldtrain.experiment import run_experiment
    from manifoldtrain.nn import MLPConfig
    from manifoldtrain.training import TrainConfig
    from toy_manifolds import SettingsSphere

    out = tmp_path_factory.mktemp("sphere") / "run"
    config = ExperimentConfig(
        manifold=SettingsSphere(), data=DataConfig(n_train=30, n_test=6, dtype="float64"),
        model=MLPConfig(hidden=(8,)), objective=Objective((ValueTerm(), OracleTerm(0.05))),
        train=TrainConfig(epochs=2, batch_size=10, progress=False))
    run_experiment(config, out, progress=False)
    return out


EVAL = ["--noise-levels", "0.01", "--budgets", "0.02", "--eval-samples", "4", "--attack-samples", "2", "--attack-steps", "1"]


def test_cli_robustness_of_a_run(sphere_run, tmp_path, capsys):
    import json

    from manifoldtrain.cli import main

    assert main(["robustness", "--run", str(sphere_run), *EVAL, "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((sphere_run / "robustness.json").read_text())
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert {"test_rmse", "amplification", "invariance_part", "sensitivity_part", "noisy_rmse", "adversarial_error"} <= set(report)
    assert set(report["adversarial_error"]) == {"0.02"}
    assert (sphere_run / "worst_case.png").stat().st_size > 0
    # --json never replaces a file that is not its own without --force.
    (tmp_path / "mine.json").write_text("keep me")
    with pytest.raises(SystemExit) as stop:
        main(["robustness", "--run", str(sphere_run), *EVAL, "--json", str(tmp_path / "mine.json")])
    assert stop.value.code == 2 and (tmp_path / "mine.json").read_text() == "keep me"
    assert "--json" in capsys.readouterr().err
    # Nor, even with --force, a file of the run it reads (its checkpoint, its results).
    for name in ("checkpoint.pt", "results.json"):
        before = (sphere_run / name).read_bytes()
        with pytest.raises(SystemExit) as stop:
            main(["robustness", "--run", str(sphere_run), *EVAL, "--json", str(sphere_run / name), "--force"])
        assert stop.value.code == 2 and (sphere_run / name).read_bytes() == before
        assert f"--json: {sphere_run / name} is a file of --run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--budgets", "-1"], "--budgets: expected finite numbers >= 0"),
    (["--noise-levels", "nan"], "--noise-levels: expected finite numbers >= 0"),
    (["--objectives", "value", "robustest"], "--objectives: expected names among"),
    (["--json", "x.json"], "--json: only with --run"),
])
def test_cli_robustness_bad_input(argv, match, capsys, tmp_path, monkeypatch):
    from manifoldtrain.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["robustness", *argv])
    assert stop.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "robustness").exists()  # refused before any work


def test_cli_robustness_run_that_is_not_a_run(tmp_path, capsys):
    from manifoldtrain.cli import main

    with pytest.raises(SystemExit):
        main(["robustness", "--run", str(tmp_path), *EVAL])
    assert "is not a trained run folder" in capsys.readouterr().err


def test_evaluate_run_rejects_another_manifold(sphere_run):
    from manifoldtrain.manifolds import Cube
    from manifoldtrain.robustness.suite import evaluate_run

    with pytest.raises(ValueError, match="manifold: the run was trained on another manifold"):
        evaluate_run(sphere_run, manifold=Cube())


def test_robust_terms_in_toml_configs(tmp_path):
    from manifoldtrain.config import ExperimentConfig, load_config, save_config

    terms = (ValueTerm(), NoiseInvarianceTerm(0.01, samples=2), AdversarialInvarianceTerm(0.3, steps=2),
             JacobianInvarianceTerm(0.03, weight=0.5, directions=3), OracleTerm(0.02, order=2),
             HessianOracleTerm(0.05, directions=2, iterations=3))
    config = ExperimentConfig(objective=Objective(terms))
    save_config(config, tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    for kind in ("invariance-noise", "invariance-adversarial", "invariance-jacobian", "oracle", "oracle-hessian"):
        assert f'kind = "{kind}"' in text
    assert load_config(tmp_path / "c.toml") == config
    (tmp_path / "bad.toml").write_text('[[objective.terms]]\nkind = "oracle"\nstrength = -1.0\n')
    with pytest.raises(ValueError, match=r"objective.terms\[0\].strength: expected a number > 0"):
        load_config(tmp_path / "bad.toml")


def test_evaluate_run_scores_the_runs_own_test_set(sphere_run):
    """Only the test samples' jets are computed, and they are the ones the run was tested on."""
    from manifoldtrain.config import load_config
    from manifoldtrain.experiment import make_data
    from manifoldtrain.robustness.suite import _test_set

    config = load_config(sphere_run / "config.toml")
    _, test = make_data(config, progress=False)
    mine = _test_set(config, 1, progress=False)
    assert test.order == 1 and len(mine) == len(test) == 6
    torch.testing.assert_close(mine.points, test.points)
    torch.testing.assert_close(mine.inputs.d1, test.inputs.d1)
    torch.testing.assert_close(mine.targets.d1, test.targets.d1)
    # Jets computed in float32 (data.compute_dtype): the same ones the run computed, bit for bit.
    config = attrs.evolve(config, data=attrs.evolve(config.data, compute_dtype="float32"))
    _, test = make_data(config, progress=False)
    mine = _test_set(config, 1, progress=False)
    for a, b in ((mine.points, test.points), (mine.inputs.d1, test.inputs.d1), (mine.targets.value, test.targets.value)):
        assert torch.equal(a, b)
