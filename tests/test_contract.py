"""Contract tests: run over every bundled manifold (and user-style toy manifolds)."""

import importlib
import inspect
import pkgutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import manifoldtrain.manifolds as bundled
from manifoldtrain import Manifold
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.testing import (
    check_batching,
    check_conventions,
    check_default_jets,
    check_finite_differences,
    check_manifold,
    check_move,
)
from manifoldtrain.testing.strategies import points, seeds

from conftest import requires_cuda
from toy_manifolds import AnalyticSphere, ScaledSphere, Sphere, TorusWinding, WrongMoveSphere, WrongSphere

BUNDLED = [getattr(bundled, name)() for name in bundled.__all__]
VARIANTS = [
    Cube(image_size=17, extent=0.8, sigma=0.06, face_colors=(0.9, 0.1, 0.5, 0.3, 0.7, 0.2), camera_distance=6.0),
    PhaseRetrieval(object_size=8, grid_size=20, widths=(0.3, 0.2), beam_stop=1.5, transform="linear",
                   target_kind="object", photons=1e4),
]
CASES = BUNDLED + VARIANTS + [Sphere(), AnalyticSphere(), ScaledSphere(), TorusWinding()]
IDS = [repr(m)[:40] for m in CASES]
# Cheap, strict finite-difference tolerances (relative to each array's scale) for smooth charts.
FD_RTOL = (1e-12, 1e-8, 1e-7)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _is_manifold_class(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, Manifold) and not inspect.isabstract(obj)


def test_every_bundled_manifold_is_covered():
    """Every public manifold class of manifoldtrain.manifolds (exported, or defined in a public
    submodule) is exported in __all__ and has a case in CASES."""
    exported = {obj for name, obj in vars(bundled).items() if not name.startswith("_") and _is_manifold_class(obj)}
    for info in pkgutil.iter_modules(bundled.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{bundled.__name__}.{info.name}")
        defined = {
            obj
            for name, obj in vars(module).items()
            if not name.startswith("_") and _is_manifold_class(obj) and obj.__module__ == module.__name__
        }
        assert defined <= exported, f"{module.__name__}: {defined - exported} not exported by manifoldtrain.manifolds"
    assert Cube in exported
    assert {cls.__name__ for cls in exported} <= set(bundled.__all__), "a manifold missing from __all__"
    missing = exported - {type(m) for m in CASES}
    assert not missing, f"no contract test case for {sorted(cls.__name__ for cls in missing)}"
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


@pytest.mark.parametrize("manifold", CASES, ids=IDS)
def test_move_recentres_the_chart(manifold):
    first = check_move(manifold, n=3, raise_on_failure=False)
    if first.skipped is not None:
        assert first.passed and not first.items
        pytest.skip(first.skipped)
    assert first.passed, str(first)

    @settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(points(manifold, n=2), seeds())
    def run(p, seed):
        report = check_move(manifold, p, seed=seed, raise_on_failure=False)
        assert report.passed, str(report)

    run()


def test_check_move_fails_on_a_wrong_move():
    wrong = WrongMoveSphere()
    report = check_move(wrong, raise_on_failure=False)
    assert not report.passed and report.skipped is None
    # Right at theta = 0, wrong away from it, for the input and the target alike.
    assert [i.name for i in report.items if not i.passed] == ["input(move).value", "target(move).value"]
    with pytest.raises(AssertionError, match=r"input\(move\)"):
        check_move(wrong)
    with pytest.raises(AssertionError, match=r"input\(move\)"):
        check_manifold(wrong)
    # The same chart with its correct override passes.
    assert check_move(ScaledSphere()).passed


def test_check_move_is_skipped_without_a_move():
    torus = TorusWinding()
    report = check_move(torus)  # does not raise
    assert report.skipped is not None and "override move" in report.skipped
    assert report.passed and report.items == ()
    assert "skipped" in str(report)
    reports = check_manifold(torus, n=2)
    assert [r.skipped is not None for r in reports] == [False, False, True]
    p = torus.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="override move"):
        torus.move(p, torch.zeros(2, 1, dtype=torch.float64))


def test_default_move_checks_its_arguments():
    sphere = Sphere()
    p = sphere.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = torch.full((2, 2), 0.01, dtype=torch.float64)
    torch.testing.assert_close(sphere.move(p, theta), p + theta, rtol=0, atol=0)
    with pytest.raises(ValueError, match="theta: expected finite"):
        sphere.move(p, torch.tensor([[0.0, float("nan")], [0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"theta: expected shape \[2, 2\]"):
        sphere.move(p, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="theta: expected dtype torch.float64"):
        sphere.move(p, torch.zeros(2, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="points: expected finite"):
        sphere.move(p * float("nan"), theta)


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
    reports = check_manifold(AnalyticSphere(), n=3)  # batching, finite differences, default jets, move
    assert len(reports) == 4 and all(r.passed and r.skipped is None for r in reports)
    assert len(check_manifold(Sphere(), n=3)) == 3  # no override: nothing to compare with the default


@requires_cuda
@pytest.mark.parametrize("manifold", BUNDLED, ids=lambda m: repr(m)[:40])
def test_cuda_matches_cpu(manifold):
    p = manifold.sample(4, torch.Generator().manual_seed(5), dtype=torch.float64)
    for jc, jg in zip(manifold.jets(p), manifold.jets(p.cuda())):
        for a, b in zip(jc.components(), jg.components()):
            assert b.device.type == "cuda"
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
