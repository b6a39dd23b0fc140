"""The phase-retrieval manifold's physics and settings, and the classical HIO/ER baseline.

(Its jets, batching, conventions and move are checked with every other manifold in
tests/test_contract.py.)"""

import math

import pytest
import torch
from hypothesis import given, settings

from manifoldtrain.baselines import (
    FitSettings,
    HIOSettings,
    MultistartSettings,
    cramer_rao_bound,
    fisher_information,
    fit_parameters,
    hio_er,
    multistart_fit,
    poisson_deviance,
    reconstruct,
    refine_parameters,
)
from manifoldtrain.manifolds import PhaseRetrieval
from manifoldtrain.registry import MANIFOLDS
from manifoldtrain.testing.strategies import points

PR = PhaseRetrieval()
F64 = torch.float64


def _sample(n, seed=0, manifold=PR):
    return manifold.sample(n, torch.Generator().manual_seed(seed), dtype=F64)


def test_registered_and_shapes():
    assert MANIFOLDS.get("phase-retrieval") is PhaseRetrieval
    assert PR.param_dim == 6 and PR.input_shape == (32, 32) and PR.target_shape == (6,)
    three = PhaseRetrieval(widths=(0.1, 0.15, 0.2), target_kind="object")
    assert three.param_dim == 9 and three.target_shape == (2, 16, 16)
    assert len(three.coordinate_names) == 9


def test_intensity_is_the_dft_of_the_object_by_hand():
    """Counts against an explicit DFT sum (no FFT) on a small grid."""
    pr = PhaseRetrieval(object_size=4, grid_size=8, widths=(0.4, 0.7), photons=100.0)
    p = _sample(2, manifold=pr)
    o = pr.object(p)
    M, N = 8, 4
    k = torch.arange(M, dtype=F64)
    j = torch.arange(N, dtype=F64)
    W = torch.exp(-2j * math.pi * k[:, None] * j[None, :] / M)  # [M, N]
    F = W @ o @ W.T
    ref = sum(float(torch.exp(-(g[0] ** 2 + g[1] ** 2) / w**2).sum()) for w in pr.widths
              for g in [pr.object_grid()]) * M**2
    expected = torch.fft.fftshift(F.abs() ** 2, dim=(-2, -1)) * (pr.photons / ref)
    torch.testing.assert_close(pr.counts(p), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=5, deadline=None)
@given(points(PR, n=3))
def test_trivial_ambiguities_leave_the_intensity_unchanged(p):
    """Global phase, integer translation (on the padded grid) and the twin give the same counts:
    why the target is built to avoid them."""
    o = PR.object(p)
    M = PR.grid_size

    def intensity(obj):
        return torch.fft.fft2(obj, s=(M, M)).abs() ** 2

    base = intensity(o)
    torch.testing.assert_close(intensity(o * torch.exp(torch.tensor(1.234j, dtype=torch.complex128))), base)
    shifted = torch.zeros(3, M, M, dtype=o.dtype)
    shifted[:, 5 : 5 + PR.object_size, 3 : 3 + PR.object_size] = o
    torch.testing.assert_close(intensity(shifted), torch.fft.fft2(shifted).abs() ** 2)
    torch.testing.assert_close(torch.fft.fft2(shifted).abs() ** 2, base, rtol=1e-9, atol=1e-9 * float(base.max()))
    # the twin in parameters is the conjugate inversion of the object on the grid
    twin = PR.twin(p)
    torch.testing.assert_close(PR.object(twin), torch.flip(o, dims=(-2, -1)).conj(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(PR.counts(twin), PR.counts(p), rtol=1e-9, atol=1e-9 * float(PR.counts(p).max()))
    with pytest.raises(ValueError, match=r"x_1 > 0"):
        PR.check_points(twin)
    # the phase is 0 at the origin and the blobs' centroid is the origin
    positions, _, _ = PR.split(p)
    torch.testing.assert_close(positions.sum(dim=1), torch.zeros(3, 2, dtype=F64), atol=1e-15, rtol=0)


def test_sampling_stays_in_the_domain_and_ranges():
    p = _sample(4000)
    PR.check_points(p)
    assert float(p[:, 0].min()) >= PR.twin_margin and float(p[:, 0].max()) <= PR.position_range
    lo, hi = PR.amplitude_range
    assert float(p[:, 2:4].min()) >= lo and float(p[:, 2:4].max()) <= hi
    assert float(p[:, 4:].abs().max()) <= PR.phase_range
    assert p.dtype == F64 and PR.sample(3).dtype == torch.get_default_dtype()


def test_measure_is_poisson_around_the_expected_counts():
    """Mean and variance of many noisy measurements match the Poisson rate (a statistical test)."""
    pr = PhaseRetrieval(transform="linear", photons=2e3, beam_stop=2.0)
    p = _sample(1, manifold=pr).expand(4000, -1).contiguous()
    rate = pr.counts(p[:1])[0]
    counts = pr.counts_from_input(pr.measure(p, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-9)  # whole photons
    mean, var = counts.mean(dim=0), counts.var(dim=0)
    busy = rate > 20
    assert busy.sum() > 20
    # standard error of the mean sqrt(rate / 4000); allow 5 sigma
    assert bool(((mean - rate).abs() <= 5 * (rate / 4000).sqrt() + 1e-9)[busy].all())
    torch.testing.assert_close(var[busy], rate[busy], rtol=0.25, atol=0)
    assert float(counts[:, pr.measured() == 0].abs().max()) == 0.0  # behind the beam stop
    assert pr.measure(p[:2].float()).dtype == torch.float32


@pytest.mark.parametrize("transform", ["log", "linear"])
def test_counts_from_input_inverts_the_transform(transform):
    pr = PhaseRetrieval(transform=transform)
    p = _sample(3, manifold=pr)
    x = pr.input(p, torch.zeros_like(p))
    torch.testing.assert_close(pr.counts_from_input(x), pr.counts(p), rtol=1e-10, atol=1e-9)


def test_object_target_is_the_object():
    pr = PhaseRetrieval(target_kind="object")
    p = _sample(2, manifold=pr)
    y = pr.target(p, torch.zeros_like(p))
    o = pr.object(p)
    assert torch.equal(y, torch.stack([o.real, o.imag], dim=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(object_size=16, grid_size=31), "grid_size: expected at least twice object_size = 32"),
        (dict(photons=-5.0), "photons"),
        (dict(photons=0.0), "photons"),
        (dict(widths=(0.2, 0.2)), "widths: expected distinct widths"),
        (dict(widths=(0.2,)), "widths: expected at least 2"),
        (dict(widths=(0.2, -0.1)), "widths"),
        (dict(twin_margin=0.5), "twin_margin: expected less than position_range"),
        (dict(transform="sqrt"), "transform: expected one of"),
        (dict(target_kind="phase"), "target_kind: expected one of"),
        (dict(beam_stop=16.0), "beam_stop"),
        (dict(amplitude_range=(1.0, 0.5)), "amplitude_range: expected low <= high"),
        (dict(phase_range=float("nan")), "phase_range"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PhaseRetrieval(**kwargs)


def test_bad_points_are_named():
    p = _sample(2)
    bad = p.clone()
    bad[1, 2] = -0.1
    with pytest.raises(ValueError, match=r"points: expected positive amplitudes.*rows \[1\]"):
        PR.input(bad, torch.zeros_like(bad))
    with pytest.raises(ValueError, match="points"):
        PR.jets(p[:, :5])
    with pytest.raises(ValueError, match="params"):
        PR.counts(p[:, :5])


def test_cli_settings_take_any_number_of_widths(tmp_path):
    from manifoldtrain.cli import main

    out = tmp_path / "pr.png"
    assert main(["show", "phase-retrieval", "--out", str(out), "--widths", "0.1", "0.15", "0.2"]) == 0
    assert out.stat().st_size > 0


# ---------------------------------------------------------------------------- the classical baseline


def test_fit_recovers_the_parameters_of_a_shifted_phased_twin():
    p = _sample(6, seed=4)
    twin = PR.object(PR.twin(p))
    shifted = torch.roll(twin, shifts=(1, -1), dims=(-2, -1)) * torch.exp(torch.tensor(0.7j, dtype=torch.complex128))
    params, residual = fit_parameters(PR, shifted, FitSettings(starts=16, iterations=60))
    # the roll wraps a little of the blobs' tails around the grid: small residual, same parameters
    assert float(residual.max()) < 0.1
    torch.testing.assert_close(params, p, atol=0.02, rtol=0)


def test_hio_er_solves_the_phase_problem_and_refinement_recovers_the_parameters():
    p = _sample(4, seed=1)
    x = PR.input(p, torch.zeros_like(p))
    objects, err = hio_er(PR, x, HIOSettings(iterations=300, starts=2))
    assert objects.shape == (4, 16, 16) and objects.is_complex()
    assert float(err.max()) < 1e-2  # the measured magnitudes are met
    _, err_start = hio_er(PR, x, HIOSettings(iterations=1, starts=2))
    assert bool((err < 0.1 * err_start).all())
    rec = reconstruct(PR, x, HIOSettings(iterations=300, starts=2), FitSettings(starts=8, iterations=40), refine=30)
    assert rec.seconds > 0 and rec.fitted.shape == (4, 6)
    solved = (rec.params - p).abs().amax(dim=1) < 1e-6
    assert int(solved.sum()) >= 3, (rec.params - p)


def test_refinement_from_near_the_truth_converges():
    p = _sample(5, seed=2)
    x = PR.input(p, torch.zeros_like(p))
    start = p + 0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    params, residual = refine_parameters(PR, x, start, iterations=20)
    torch.testing.assert_close(params, p, atol=1e-7, rtol=0)
    assert float(residual.max()) < 1e-8


def test_baseline_bad_inputs_are_named():
    p = _sample(2)
    x = PR.input(p, torch.zeros_like(p))
    with pytest.raises(TypeError, match="manifold: expected a PhaseRetrieval"):
        hio_er(object(), x)
    with pytest.raises(ValueError, match="inputs"):
        hio_er(PR, x[:, :10])
    with pytest.raises(TypeError, match="objects: expected a complex tensor"):
        fit_parameters(PR, x)
    with pytest.raises(ValueError, match="iterations"):
        HIOSettings(iterations=0)
    with pytest.raises(ValueError, match="beta"):
        HIOSettings(beta=1.5)
    with pytest.raises(ValueError, match="refine"):
        reconstruct(PR, x, refine=-1)


def test_multistart_fit_recovers_noiseless_parameters():
    """From the expected counts (no noise) the fit lands on the truth, twin mapped to canonical."""
    p = _sample(6, seed=7)
    est, dev = multistart_fit(PR, PR.counts(p), MultistartSettings(starts=8, iterations=20))
    assert est.dtype == F64 and est.shape == (6, 6)
    torch.testing.assert_close(est, p, atol=1e-7, rtol=0)
    assert float(dev.max()) < 1e-8
    # float32 counts: the fit runs in float32 and still recovers the parameters to float32 accuracy
    est32, _ = multistart_fit(PR, PR.counts(p).float(), MultistartSettings(starts=8, iterations=20))
    assert est32.dtype == torch.float32
    torch.testing.assert_close(est32.double(), p, atol=2e-4, rtol=0)
    # settings.dtype overrides the counts' dtype
    est64, _ = multistart_fit(PR, PR.counts(p).float(), MultistartSettings(starts=8, iterations=20, dtype="float64"))
    assert est64.dtype == F64


def test_poisson_deviance_is_twice_the_log_likelihood_ratio():
    p = _sample(3, seed=8)
    mu = PR.counts(p)
    k = torch.poisson(mu, generator=torch.Generator().manual_seed(0))
    expected = 2 * (torch.xlogy(k, k) - torch.xlogy(k, mu) - k + mu).sum(dim=(-2, -1))
    torch.testing.assert_close(poisson_deviance(PR, k, p), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(poisson_deviance(PR, mu, p), torch.zeros(3, dtype=F64), rtol=0, atol=1e-9)


def _fd_fisher(manifold, p, h=1e-5):
    """Fisher information from central differences of the expected counts, float64."""
    mu = manifold.counts(p)
    d = p.shape[1]
    grads = []
    for i in range(d):
        e = torch.zeros_like(p)
        e[:, i] = h
        grads.append((manifold.counts(p + e) - manifold.counts(p - e)) / (2 * h))
    g = torch.stack(grads, dim=1).flatten(2)
    w = torch.where(mu > 0, 1 / mu.clamp_min(1e-300), torch.zeros_like(mu)).flatten(1)
    return torch.einsum("nip,njp->nij", g * w[:, None], g)


@pytest.mark.parametrize("manifold", [PR, PhaseRetrieval(transform="linear", beam_stop=2.0, photons=1e4)],
                         ids=["log", "linear-beam-stop"])
def test_fisher_information_matches_finite_differences(manifold):
    p = _sample(3, seed=9, manifold=manifold)
    info = fisher_information(manifold, p)
    assert info.shape == (3, 6, 6)
    torch.testing.assert_close(info, info.transpose(1, 2))
    torch.testing.assert_close(info, _fd_fisher(manifold, p), rtol=1e-6, atol=1e-6 * float(info.abs().max()))
    # proportional to the photon count
    torch.testing.assert_close(fisher_information(manifold, p, photons=3 * manifold.photons), 3 * info)


def test_multistart_fit_attains_the_cramer_rao_bound():
    """Monte-Carlo at one point: the fit over 120 Poisson draws has the covariance the CRB says.

    Tolerances, for 120 draws: each parameter's empirical standard deviation within [0.75, 1.3]
    of its floor (the estimate's own relative spread is about 0.065, so about 4 sigma), the
    mean error under 0.4 floors (the mean's spread is 0.09 floors), and the mean of the
    Fisher-whitened squared error (d = 6 for an efficient estimator, spread sqrt(2 d / 120) =
    0.32) within 1.3 of 6. The seeds are fixed, so the test is deterministic (measured: ratios 0.90-1.05,
    whitened mean 5.4)."""
    p = _sample(1, seed=11)
    draws = 120
    k = torch.poisson(PR.counts(p).expand(draws, -1, -1).contiguous(), generator=torch.Generator().manual_seed(3))
    est, _ = multistart_fit(PR, k.float(), MultistartSettings(seed=1))  # float32: as float64 here, half the time
    err = est.double() - p
    std = cramer_rao_bound(PR, p)[0]
    ratio = err.std(dim=0) / std
    assert bool(((ratio > 0.75) & (ratio < 1.3)).all()), ratio
    assert float(err.mean(dim=0).abs().div(std).max()) < 0.4  # bias well under the floor (4 sigma of the mean)
    info = fisher_information(PR, p)[0]
    whitened = torch.einsum("bi,ij,bj->b", err, info, err)
    assert abs(float(whitened.mean()) - 6) < 1.3, float(whitened.mean())


def test_multistart_fit_and_bound_bad_arguments_are_named():
    p = _sample(2)
    k = PR.counts(p)
    with pytest.raises(TypeError, match="manifold: expected a PhaseRetrieval"):
        multistart_fit(object(), k)
    with pytest.raises(ValueError, match="counts: expected shape"):
        multistart_fit(PR, k[:, :10])
    with pytest.raises(ValueError, match="counts: expected photon counts >= 0"):
        multistart_fit(PR, PR.input(p, torch.zeros_like(p)) - 1)
    with pytest.raises(TypeError, match="counts: expected dtype"):
        multistart_fit(PR, k.long())
    with pytest.raises(TypeError, match="settings: expected MultistartSettings"):
        multistart_fit(PR, k, FitSettings())
    with pytest.raises(TypeError, match="generator"):
        multistart_fit(PR, k, generator=0)
    with pytest.raises(ValueError, match="starts"):
        MultistartSettings(starts=0)
    with pytest.raises(ValueError, match="iterations"):
        MultistartSettings(iterations=0)
    with pytest.raises(ValueError, match="dtype"):
        MultistartSettings(dtype="float16")
    with pytest.raises(ValueError, match="photons"):
        cramer_rao_bound(PR, p, photons=-1.0)
    with pytest.raises(ValueError, match="points"):
        cramer_rao_bound(PR, PR.twin(p))
    with pytest.raises(ValueError, match="params: expected shape"):
        poisson_deviance(PR, k, p[:1])


# ---------------------------------------------------------------------------- commands on it


def test_demo_on_phase_retrieval(tmp_path):
    import json

    from manifoldtrain.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--manifold", "phase-retrieval", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["manifold"] == "phase-retrieval"
    assert [r["objective"] for r in results["runs"]] == ["value", "first", "second"]
    assert all(r["test_rmse"] > 0 and r["epochs"] >= 1 for r in results["runs"])


def test_robustness_command_on_phase_retrieval(tmp_path):
    import json

    from manifoldtrain.cli import main

    out = tmp_path / "rob"
    argv = ["robustness", "--manifold", "phase-retrieval", "--out", str(out), "--n-train", "40", "--n-test", "4",
            "--widths", "8", "--depth", "1", "--seconds-per-run", "0.3", "--objectives", "value", "oracle-hessian",
            "--oracle-strengths", "0.3", "--noise-levels", "0.01", "--budgets", "0.05", "--eval-samples", "3",
            "--attack-samples", "2", "--attack-steps", "1", "--no-progress"]
    assert main(argv) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["objective"] for r in runs] == ["value", "oracle-hessian"]
    for r in runs:
        assert r["amplification"] > 0 and r["oracle_failures"] == 0
        assert math.isfinite(r["adversarial_error"]["0.05"])
    assert (out / "tradeoff.png").stat().st_size > 0


def test_phase_retrieval_benchmark_quick(tmp_path):
    import runpy
    from pathlib import Path

    mod = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "phase_retrieval.py"))
    results = mod["main"](["--quick", "--work", str(tmp_path / "prq")])
    methods = results["methods"]
    assert set(methods) == {"value", "first", "second", "oracle-hessian", "hio-er + fit", "hio-er + fit + refine",
                            "direct fit", "cramer-rao bound"}
    for name, m in methods.items():
        for label in ("clean", "noisy"):
            if name == "cramer-rao bound":
                assert m[label]["ms_per_pattern"] is None
                assert (m[label]["relative_rmse"] > 0) == (label == "noisy")
            else:
                assert m[label]["relative_rmse"] > 0 and m[label]["ms_per_pattern"] > 0
    assert {"value_over_second_clean", "speedup_over_hio", "speedup_over_fit", "best_network_over_fit_noisy",
            "best_network_over_crb_noisy"} <= set(results["summary"])
    assert methods["hio-er + fit"]["noisy"]["ms_per_pattern_hio"] > 0
    assert (tmp_path / "prq" / "results.json").exists()
