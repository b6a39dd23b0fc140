"""Contract tests: run over every bundled manifold (and user-style toy manifolds)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import manifoldtrain.manifolds as bundled
from manifoldtrain import Manifold
from manifoldtrain.manifolds import Cube
from manifoldtrain.testing import (
    check_batching,
    check_conventions,
    check_default_jets,
    check_finite_differences,
    check_manifold,
)
from manifoldtrain.testing.strategies import points

from conftest import requires_cuda
from toy_manifolds import AnalyticSphere, Sphere, WrongSphere

BUNDLED = [getattr(bundled, name)() for name in bundled.__all__]
VARIANTS = [
    Cube(image_size=17, extent=0.8, sigma=0.06, face_colors=(0.9, 0.1, 0.5, 0.3, 0.7, 0.2), camera_distance=6.0),
]
CASES = BUNDLED + VARIANTS + [Sphere(), AnalyticSphere()]
IDS = [repr(m)[:40] for m in CASES]
# Cheap, strict finite-difference tolerances (relative to each array's scale) for smooth charts.
FD_RTOL = (1e-12, 1e-8, 1e-7)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_every_bundled_manifold_is_covered():
    assert {type(m) for m in BUNDLED} <= {type(m) for m in CASES}
    assert all(isinstance(m, Manifold) for m in CASES)


@pytest.mark.parametrize("manifold", CASES, ids=IDS)
def test_conventions(manifold):
    check_conventions(manifold, manifold.sample(3, torch.Generator().manual_seed(1), dtype=torch.float64))


@pytest.mark.parametrize("manifold", CASES, ids=IDS)
def test_batch_equals_one_by_one(manifold):
    check_batching(manifold, manifold.sample(4, torch.Generator().manual_seed(2), dtype=torch.float64))


@pytest.mark.parametrize("manifold", CASES, ids=IDS)
def test_jets_match_finite_differences(manifold):
    @settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(points(manifold, n=1))
    def run(p):
        report = check_finite_differences(manifold, p, rtol=FD_RTOL, raise_on_failure=False)
        assert report.passed, str(report)

    run()


@pytest.mark.parametrize("manifold", [m for m in CASES if type(m).jets is not Manifold.jets], ids=lambda m: repr(m)[:40])
def test_analytic_jets_match_torch_func_default(manifold):
    @settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(points(manifold, n=2))
    def run(p):
        check_default_jets(manifold, p)

    run()


@pytest.mark.parametrize("manifold", CASES, ids=IDS)
def test_float32_jets_match_float64(manifold):
    p = manifold.sample(3, torch.Generator().manual_seed(4), dtype=torch.float64)
    for j32, j64 in zip(manifold.jets(p.float()), manifold.jets(p)):
        for a, b in zip(j32.components(), j64.components()):
            assert a.dtype == torch.float32
            scale = b.abs().max()
            assert (a.double() - b).abs().max() <= 2e-5 * scale + 1e-6


def test_checks_fail_on_wrong_derivatives():
    wrong = WrongSphere()
    p = wrong.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    report = check_finite_differences(wrong, p, raise_on_failure=False)
    assert not report.passed
    assert [i.name for i in report.items if not i.passed] == ["input.d2"]
    with pytest.raises(AssertionError, match="input.d2"):
        check_default_jets(wrong, p)
    with pytest.raises(AssertionError, match="input.d2"):
        check_manifold(wrong, p)


def test_check_manifold_runs_all_checks_on_a_user_manifold():
    reports = check_manifold(AnalyticSphere(), n=3)
    assert len(reports) == 3 and all(r.passed for r in reports)
    assert len(check_manifold(Sphere(), n=3)) == 2  # no override: nothing to compare with the default


@requires_cuda
@pytest.mark.parametrize("manifold", BUNDLED, ids=lambda m: repr(m)[:40])
def test_cuda_matches_cpu(manifold):
    p = manifold.sample(4, torch.Generator().manual_seed(5), dtype=torch.float64)
    for jc, jg in zip(manifold.jets(p), manifold.jets(p.cuda())):
        for a, b in zip(jc.components(), jg.components()):
            assert b.device.type == "cuda"
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
