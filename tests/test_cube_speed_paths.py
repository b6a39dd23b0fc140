"""The cube's fast jets (pixels near the edges only) against the evaluation on every pixel.

``Cube.jets`` evaluates the closed forms only on the pixels within the band radius of some
visible edge (``Cube._band_radius``); ``Cube._dense_jets`` is the same renderer on every
(edge, pixel) pair, the renderer before that culling. They must be the same function to
rounding, in float64 and float32, for any pose and any option of the cube.
"""

import json
import math
import runpy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldtrain.manifolds import Cube
from manifoldtrain.manifolds import cube as cube_module

from conftest import ROOT, requires_cuda

CUBES = {
    "default": Cube(),
    "any rotation": Cube(max_angle=math.pi, translation_radius=0.3),
    "options": Cube(image_size=17, extent=0.8, sigma=0.06, face_colors=(0.9, 0.1, 0.5, 0.3, 0.7, 0.2), camera_distance=6.0),
    # Faces wide enough to hold pixels far from every edge: the value there is the face's colour.
    "small sigma": Cube(sigma=0.005),
    "small image": Cube(image_size=2),
}


def dense(cube, points, order=2):
    return cube._dense_jets(points, order)[0]


def assert_same_function(fast, slow, value_atol, rtol):
    """Components equal to ``rtol`` times each component's largest entry, or times 1 where that
    is smaller (an image with no edge near any pixel; the derivatives of the cube's edges are
    of order 10 to 1000), and the value to ``value_atol``."""
    assert torch.isfinite(fast[0]).all()
    assert (fast[0] - slow[0]).abs().max() <= value_atol
    for k in range(1, len(slow)):
        assert torch.isfinite(fast[k]).all()
        scale = slow[k].abs().amax().clamp_min(1.0)
        assert (fast[k] - slow[k]).abs().max() <= rtol * scale, (k, float((fast[k] - slow[k]).abs().max() / scale))


@pytest.mark.parametrize("name", sorted(CUBES))
def test_fast_jets_equal_dense_jets_float64(name):
    cube = CUBES[name]
    points = cube.sample(24, torch.Generator().manual_seed(5), dtype=torch.float64)
    fast = list(cube.jets(points)[0].components())
    # Values within a few ulps of 1, derivatives within 1e-13 of their scale (the dense path
    # itself loses ~1e-14 of d2 to cancellation in its q K terms).
    assert_same_function(fast, dense(cube, points), value_atol=1e-15, rtol=1e-13)


@pytest.mark.parametrize("name", ["default", "any rotation", "small sigma"])
def test_fast_jets_equal_dense_jets_float32(name):
    cube = CUBES[name]
    points = cube.sample(16, torch.Generator().manual_seed(6), dtype=torch.float32)
    fast = list(cube.jets(points)[0].components())
    slow = dense(cube, points)
    assert_same_function(fast, slow, value_atol=1e-6, rtol=1e-4)
    # ... and as close to the float64 jets as the dense float32 ones are.
    exact = dense(cube, points.double())
    for f, s, e in zip(fast, slow, exact):
        scale = e.abs().amax()
        assert (f.double() - e).abs().max() <= 2 * (s.double() - e).abs().max() + 1e-6 * scale


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(sorted(CUBES)))
def test_fast_jets_equal_dense_jets_any_seed(seed, name):
    cube = CUBES[name]
    points = cube.sample(3, torch.Generator().manual_seed(seed), dtype=torch.float64)
    for order in (0, 1, 2):
        fast = list(cube.jets(points, order)[0].components())
        assert_same_function(fast, dense(cube, points, order), value_atol=1e-15, rtol=1e-13)


def test_special_poses():
    """Pose 0 (a corner exactly on the centre pixel), an edge on a row of pixel centres (h == 0
    there), one face head-on, a cube partly outside the image."""
    cube = Cube()
    line = Cube(image_size=11, base_angles=(0.0, 0.0, 0.0))
    p = torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    base = line.base_corners()
    edge = [i for i in range(8) if base[i, 1] > 0 and base[i, 2] > 0]
    p[0, 4] = -line._posed_corners(p)[0, edge, 1][0]  # that edge onto the row y = 0
    assert (line._project(line._posed_corners(p))[0, edge, 1] == 0).all()
    for c, points in (
        (cube, torch.zeros(1, 6, dtype=torch.float64)),
        (line, p),
        (cube, torch.tensor([[0.0, 0.0, 0.0, 0.95, 0.0, 0.0]], dtype=torch.float64)),
        (cube, torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.0, 0.0]], dtype=torch.float64)),
    ):
        fast = list(c.jets(points)[0].components())
        assert_same_function(fast, dense(c, points), value_atol=1e-15, rtol=1e-13)


def test_far_pixels_are_zero_in_the_dense_jets_too():
    """What the fast path leaves out is below the bound of Cube._band_radius in the dense jets:
    derivatives below 2^-60 of their scale; the value, background, is 0 to the rounding of the
    dense path's angle terms (which sum to 0 there)."""
    cube = Cube()
    points = cube.sample(16, torch.Generator().manual_seed(8), dtype=torch.float64)
    image = dense(cube, points)
    near = _near(cube, points)
    far = ~near.view(-1, 41, 41)
    assert far.sum(dim=(1, 2)).min() > 800  # most of the image
    assert image[0][far].abs().max() < 2e-16
    for k in (1, 2):
        scale = image[k].abs().amax()
        assert image[k].transpose(0, 1)[:, far].abs().max() <= 2.0**-60 * scale


def _near(cube, points):
    """Cube._near_mask for these points, recomputed as _fast_jets does."""
    uv = cube._project(cube._posed_corners(points))
    weight = cube._edge_weights(uv)
    edges = torch.tensor(cube_module._EDGES)
    a, b = uv[:, edges[:, 0]] / cube.sigma, uv[:, edges[:, 1]] / cube.sigma
    length = (b - a).norm(dim=-1)
    t = (b - a) / length[..., None]
    return cube._near_mask(a, length, t[..., 0], t[..., 1], cube._band_radius(length), weight != 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_mask_is_the_band(dtype):
    """Every pixel within the radius of a live edge is in the mask, none much beyond it:
    random segments, horizontal and vertical ones, and ones partly off the image."""
    cube = Cube(image_size=23, sigma=0.05)
    gen = torch.Generator().manual_seed(0)
    n, e = 40, 5
    a = (torch.rand(n, e, 2, generator=gen, dtype=torch.float64) * 3 - 1.5) / cube.sigma
    b = (torch.rand(n, e, 2, generator=gen, dtype=torch.float64) * 3 - 1.5) / cube.sigma
    b[:5, 0, 1] = a[:5, 0, 1]  # horizontal
    b[5:10, 0, 0] = a[5:10, 0, 0]  # vertical
    a, b = a.to(dtype), b.to(dtype)
    live = torch.rand(n, e, generator=gen) < 0.8
    length = (b - a).norm(dim=-1)
    t = (b - a) / length[..., None]
    radius = torch.rand(n, e, generator=gen, dtype=dtype) * 4 + 1
    mask = cube._near_mask(a, length, t[..., 0], t[..., 1], radius, live)
    gx, gy = cube.pixel_grid(torch.float64)
    q = torch.stack([gx.flatten(), gy.flatten()], -1) / cube.sigma  # [P, 2]
    a64, b64 = a.double()[:, :, None], b.double()[:, :, None]
    d = b64 - a64
    s = (((q - a64) * d).sum(-1) / (d * d).sum(-1)).clamp(0, 1)
    dist = (a64 + s[..., None] * d - q).norm(dim=-1)  # [n, E, P]
    r = radius.double()[..., None]
    inside = ((dist <= r * (1 - 1e-5)) & live[..., None]).any(1)
    outside = ~((dist <= r * (1 + 1e-5) + 1e-5) & live[..., None]).any(1)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert mask[inside].all()
    assert not mask[outside].any()


def test_band_radius_bound():
    """The radius solves 2 (D + 3) exp(-D^2/2) <= eps / 256 for both dtypes (and not much more)."""
    cube = Cube()
    for dtype, eps in ((torch.float64, 2.0**-60), (torch.float32, 2.0**-31)):
        d = float(cube._band_radius(torch.ones(1, dtype=dtype)))
        assert 2 * (d + 3) * math.exp(-d * d / 2) <= eps
        assert 2 * (d + 3 - 0.3) * math.exp(-((d - 0.3) ** 2) / 2) > eps


def test_deep_coverage_is_used_and_right():
    """Small sigma: faces hold pixels far from every edge, whose value is the face's colour."""
    cube = CUBES["small sigma"]
    points = cube.sample(4, torch.Generator().manual_seed(3), dtype=torch.float64)
    uv = cube._project(cube._posed_corners(points))
    weight = cube._edge_weights(uv)
    radius = cube._band_radius(torch.ones_like(weight))
    assert cube._deep_coverage(uv, radius, weight != 0) is not None
    image = cube.jets(points, 0)[0].value
    colors = set(round(c, 12) for c in cube.face_colors)
    far = ~_near(cube, points).view(-1, 41, 41)
    values = set(round(v, 12) for v in image[far].tolist())
    assert values <= colors | {0.0} and len(values & colors) >= 2


def test_chunks_and_batches_agree():
    cube = Cube()
    points = cube.sample(7, torch.Generator().manual_seed(2), dtype=torch.float64)
    full = [c for j in cube.jets(points) for c in j.components()]
    for chunk in (1, 3, 100):
        got = [c for j in cube.jets(points, chunk_size=chunk) for c in j.components()]
        for x, y in zip(got, full):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-14)
    one = [c for j in cube.jets(points[4:5]) for c in j.components()]
    for x, y in zip(one, full):
        torch.testing.assert_close(x, y[4:5], rtol=1e-13, atol=1e-14)


def test_results_are_fresh_contiguous_tensors():
    cube = Cube()
    points = cube.sample(3, torch.Generator().manual_seed(0), dtype=torch.float32)
    image, target = cube.jets(points)
    for x in (*image.components(), *target.components()):
        assert x.is_contiguous() and x.dtype == torch.float32
    assert image.value.untyped_storage().data_ptr() != image.d1.untyped_storage().data_ptr()


def _compiled_render(monkeypatch, points, cube=None):
    cube = Cube() if cube is None else cube
    monkeypatch.setenv("MANIFOLDTRAIN_CUBE_COMPILE", "1")
    try:
        return [c for j in cube.jets(points) for c in j.components()]
    finally:
        monkeypatch.delenv("MANIFOLDTRAIN_CUBE_COMPILE")


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(cube_module, "_COMPILE_STATE", {"failed": False})
    monkeypatch.setattr(torch, "compile", broken)
    points = Cube().sample(4, torch.Generator().manual_seed(1), dtype=torch.float32)
    eager = [c for j in Cube().jets(points) for c in j.components()]
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        got = _compiled_render(monkeypatch, points)
    assert cube_module._COMPILE_STATE["failed"]
    for x, y in zip(got, eager):
        assert torch.equal(x, y)


def test_compiled_kernels_give_the_same_jets(monkeypatch):
    """MANIFOLDTRAIN_CUBE_COMPILE=1: the float32 kernels fused by torch.compile (compiles once,
    10-30 s), the same function to float32 rounding; float64 stays eager."""
    monkeypatch.setattr(cube_module, "_COMPILE_STATE", {"failed": False})
    points = Cube().sample(40, torch.Generator().manual_seed(4), dtype=torch.float32)
    eager = [c for j in Cube().jets(points) for c in j.components()]
    got = _compiled_render(monkeypatch, points)
    assert not cube_module._COMPILE_STATE["failed"]
    assert "band_terms" in cube_module._COMPILE_STATE
    for x, y in zip(got, eager):
        assert (x - y).abs().max() <= 2e-6 * y.abs().max() + 1e-6
    p64 = points.double()
    assert [c for j in Cube().jets(p64) for c in j.components()][2].dtype == torch.float64


def test_render_benchmark_step_cost(tmp_path):
    out = tmp_path / "render.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "render.py"))
    assert mod["main"](["--quick", "--manifold", "cube", "--threads", "1", "--step-cost", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["second_order_step_seconds_per_sample"] > 0
    assert all(r["render_over_second_order_step"] > 0 for r in data["rows"])


def test_render_benchmark_exact_only_cpu_time(tmp_path):
    """The old-against-new comparison's options: exact jets only, any order, CPU time."""
    out = tmp_path / "render.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "render.py"))
    argv = ["--quick", "--manifold", "cube", "--threads", "1", "--exact-only", "--order", "1", "--cpu-time"]
    assert mod["main"](argv + ["--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["clock"] == "cpu"
    assert data["rows"] and all(r["order"] == 1 and r["exact_samples_per_s"] > 0 for r in data["rows"])
    assert not any("fd_samples_per_s" in r or "torch_func_samples_per_s" in r for r in data["rows"])
    with pytest.raises(SystemExit):
        mod["main"](["--quick", "--order", "1", "--step-cost"])


def test_render_benchmark_names_a_bad_device(capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "render.py"))
    with pytest.raises(SystemExit):
        mod["main"](["--quick", "--device", "tpu"])
    assert "--device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in capsys.readouterr().err


@requires_cuda
def test_render_benchmark_on_cuda(tmp_path):
    out = tmp_path / "render.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "render.py"))
    assert mod["main"](["--quick", "--manifold", "cube", "--device", "cuda", "--step-cost", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["device"].startswith("cuda")
    assert all(r["exact_samples_per_s"] > 0 for r in data["rows"])
