"""The cube of CUBE_SPEC.md: independent reference vectors, spec facts, options and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from manifoldtrain import chart_jet
from manifoldtrain.manifolds import Cube

from conftest import DATA

REF = np.load(DATA / "cube_vectors.npz")


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(scope="module")
def cube():
    return Cube()


@pytest.fixture(scope="module")
def ref_jets(cube):
    return cube.jets(torch.tensor(REF["points"]))


def test_reference_values(cube, ref_jets):
    points = torch.tensor(REF["points"])
    zero = torch.zeros(3, 6, dtype=torch.float64)
    image, target = ref_jets
    assert np.abs(image.value.numpy() - REF["image_value"]).max() < 1e-13
    assert np.abs(cube.input(points, zero).numpy() - REF["image_value"]).max() < 1e-13
    assert np.abs(cube.reference_input(points, zero).numpy() - REF["image_value"]).max() < 1e-13
    assert np.abs(target.value.numpy() - REF["target_value"]).max() < 1e-15
    assert np.abs(cube.target(points, zero).numpy() - REF["target_value"]).max() < 1e-15


def test_reference_derivatives(ref_jets):
    # The reference derivatives are central differences: ~3e-7 (d1) and ~5e-5 (d2) relative.
    image, target = ref_jets
    assert rel(image.d1, REF["image_d1"]) < 1e-6
    assert rel(image.d2, REF["image_d2"]) < 1e-4
    assert rel(target.d1, REF["target_d1"]) < 1e-9
    assert rel(target.d2, REF["target_d2"]) < 1e-6


def test_reference_in_float32(cube):
    image, target = cube.jets(torch.tensor(REF["points"], dtype=torch.float32))
    assert image.dtype == torch.float32
    assert np.abs(image.value.numpy() - REF["image_value"]).max() < 1e-5
    assert rel(image.d1, REF["image_d1"]) < 1e-5
    assert rel(image.d2, REF["image_d2"]) < 1e-4


def test_reference_input_derivatives_by_torch_func(cube, ref_jets):
    """The slow, obvious image differentiated by torch.func equals the analytic jets."""
    points = torch.tensor(REF["points"][:1])
    jet = chart_jet(lambda t: cube.reference_input(points, t), torch.zeros(1, 6, dtype=torch.float64), 2, chunk_size=7)
    image = ref_jets[0][:1]
    assert rel(jet.d1, image.d1) < 1e-12
    assert rel(jet.d2, image.d2) < 1e-12


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.15))
def test_input_equals_reference_input_off_the_point(seed, scale):
    cube = Cube()
    gen = torch.Generator().manual_seed(seed)
    points = cube.sample(2, gen, dtype=torch.float64)
    theta = scale * torch.randn(2, 6, generator=gen, dtype=torch.float64)
    fast, slow = cube.input(points, theta), cube.reference_input(points, theta)
    assert (fast - slow).abs().max() < 1e-14


def test_pixel_grid_orientation():
    cube = Cube()
    x, y = cube.pixel_grid()
    assert x[0, 0] == -1 and y[0, 0] == 1  # row 0 is the top, column 0 the left
    assert x[0, 40] == 1 and y[40, 0] == -1
    assert math.isclose(cube.pixel_size, 0.05)


def test_corner_on_view_at_the_identity_pose(cube):
    """At pose 0 the cube is seen corner-on: faces 1, 4, 6 meet at the centre pixel, a third each."""
    p = torch.zeros(1, 6, dtype=torch.float64)
    image, target = cube.jets(p, order=0)
    assert abs(image.value[0, 20, 20].item() - (1 + 4 + 6) / 18) < 1e-6
    visible = cube._face_weights(cube._project(cube._posed_corners(p)))[0]
    assert (visible > 0).tolist() == [True, False, False, True, False, True]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32))
def test_image_range_and_background(seed):
    cube = Cube()
    points = cube.sample(8, torch.Generator().manual_seed(seed), dtype=torch.float64)
    image, _ = cube.jets(points, order=0)
    assert image.value.min() > -1e-14 and image.value.max() < 1 + 1e-14
    # Pixels beyond the projected corners' bounding circle by 10 sigma are background (0).
    uv = cube._project(cube._posed_corners(points))  # [n, 8, 2]
    centre = uv.mean(1, keepdim=True)
    reach = (uv - centre).norm(dim=-1).max(1).values + 10 * cube.sigma
    x, y = cube.pixel_grid()
    dist = torch.hypot(x - centre[:, :, 0, None], y - centre[:, :, 1, None])  # [n, 41, 41]
    far = dist > reach[:, None, None]
    assert far.any()
    assert image.value[far].abs().max() < 1e-15


def test_target_derivatives_along_translations_are_unit(cube, ref_jets):
    target = ref_jets[1]
    for axis in range(3):
        expected = torch.zeros(3, 9, dtype=torch.float64)
        expected[:, axis::3] = 1.0
        torch.testing.assert_close(target.d1[:, axis], expected, rtol=0, atol=1e-15)
    assert target.d2[:, :15].abs().max() == 0  # no second derivative involves a translation


def test_colors_enter_linearly():
    points = Cube().sample(2, torch.Generator().manual_seed(3), dtype=torch.float64)
    base, _ = Cube().jets(points)
    doubled, _ = Cube(face_colors=tuple(2 * (i + 1) / 6 for i in range(6))).jets(points)
    for a, b in zip(base.components(), doubled.components()):
        torch.testing.assert_close(b, 2 * a, rtol=1e-12, atol=1e-13)


def test_chunking_and_orders_agree(cube):
    points = cube.sample(5, torch.Generator().manual_seed(7), dtype=torch.float64)
    full = cube.jets(points, chunk_size=32)
    for chunk in (1, 2):
        for a, b in zip(cube.jets(points, chunk_size=chunk), full):
            for x, y in zip(a.components(), b.components()):
                torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    for order in (0, 1):
        for a, b in zip(cube.jets(points, order), full):
            assert a.order == order
            for x, y in zip(a.components(), b.components()):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-14)


def test_empty_batch(cube):
    image, target = cube.jets(torch.zeros(0, 6, dtype=torch.float64))
    assert image.d2.shape == (0, 21, 41, 41) and target.d2.shape == (0, 21, 9)


def test_image_size_option():
    cube = Cube(image_size=21, extent=1.2)
    image, _ = cube.jets(cube.sample(2, torch.Generator().manual_seed(0)))
    assert image.value.shape == (2, 21, 21) and image.d2.shape == (2, 21, 21, 21)


# ----------------------------------------------------------------- sampling


def test_sampling_distribution():
    cube = Cube()
    p = cube.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    angle, radius = p[:, :3].norm(dim=1), p[:, 3:].norm(dim=1)
    assert angle.max() <= math.pi / 8 + 1e-12 and radius.max() <= 0.52 + 1e-12
    # |angle| uniform on [0, pi/8]; (radius / 0.52)^3 uniform on [0, 1]; directions isotropic.
    assert abs(angle.mean().item() - math.pi / 16) < 0.01
    assert abs(((radius / 0.52) ** 3).mean().item() - 0.5) < 0.01
    assert (p[:, :3] / angle[:, None]).mean(0).abs().max() < 0.03
    assert (p[:, 3:] / radius[:, None]).mean(0).abs().max() < 0.03


def test_sampling_is_reproducible_and_follows_dtype():
    cube = Cube()
    a = cube.sample(5, torch.Generator().manual_seed(1), dtype=torch.float64)
    b = cube.sample(5, torch.Generator().manual_seed(1), dtype=torch.float64)
    c = cube.sample(5, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert cube.sample(3, dtype=torch.float32).dtype == torch.float32
    assert cube.sample(0).shape == (0, 6)


def test_sampling_options():
    cube = Cube(max_angle=0.1, translation_radius=0.2)
    p = cube.sample(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert p[:, :3].norm(dim=1).max() <= 0.1 + 1e-12 and p[:, 3:].norm(dim=1).max() <= 0.2 + 1e-12


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"image_size": 1}, ValueError, "image_size"),
        ({"image_size": 41.0}, TypeError, "image_size"),
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": float("nan")}, ValueError, "sigma"),
        ({"extent": -1.0}, ValueError, "extent"),
        ({"focal_length": "5"}, TypeError, "focal_length"),
        ({"camera_distance": 0}, ValueError, "camera_distance"),
        ({"half_size": -0.2}, ValueError, "half_size"),
        ({"face_colors": (1, 2, 3)}, ValueError, "face_colors"),
        ({"face_colors": (1, 2, 3, 4, 5, float("inf"))}, ValueError, "face_colors"),
        ({"base_angles": 3.0}, TypeError, "sequence"),
        ({"max_angle": 4.0}, ValueError, "max_angle"),
        ({"translation_radius": -0.1}, ValueError, "translation_radius"),
        ({"near_clip": 0.0}, ValueError, "near_clip"),
        ({"blur": 0.03}, TypeError, "blur"),
    ],
)
def test_bad_options(kwargs, error, name):
    with pytest.raises(error, match=name):
        Cube(**kwargs)


def test_options_are_frozen():
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Cube().sigma = 0.1


@pytest.mark.parametrize(
    "points, error, match",
    [
        (torch.zeros(2, 5, dtype=torch.float64), ValueError, r"points: expected shape \[\*, 6\]"),
        (torch.zeros(6, dtype=torch.float64), ValueError, r"points: expected shape"),
        (torch.zeros(2, 6, dtype=torch.int64), TypeError, "points: expected dtype float32 or float64"),
        (torch.zeros(2, 6, dtype=torch.float16), TypeError, "points: expected dtype"),
        (torch.tensor([[0.0, 0, 0, 0, 0, float("nan")]]), ValueError, "points: expected finite"),
        (torch.tensor([[0.0, 0, float("inf"), 0, 0, 0]]), ValueError, "points: expected finite"),
        (torch.tensor([[0.0, 0, 0, 0, 0, 4.7]]), ValueError, r"points: .*in front of the camera.*\[0\]"),
        ([[0.0] * 6], TypeError, "points: expected a torch.Tensor"),
    ],
)
def test_bad_points(points, error, match):
    cube = Cube()
    with pytest.raises(error, match=match):
        cube.jets(points)
    if isinstance(points, torch.Tensor) and points.dim() == 2 and points.shape[1] == 6:
        theta = torch.zeros(points.shape[0], 6, dtype=points.dtype)
        with pytest.raises(error, match=match):
            cube.input(points, theta)
        with pytest.raises(error, match=match):
            cube.target(points, theta)


def test_bad_theta_and_order():
    cube = Cube()
    p = torch.zeros(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"theta: expected shape \[2, 6\]"):
        cube.input(p, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="theta: expected dtype torch.float64"):
        cube.input(p, torch.zeros(2, 6, dtype=torch.float32))
    with pytest.raises(ValueError, match="order"):
        cube.jets(p, order=3)
    with pytest.raises(TypeError, match="order"):
        cube.jets(p, order=1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        cube.jets(p, chunk_size=0)
    with pytest.raises(ValueError, match="n: expected an int >= 0"):
        cube.sample(-1)
    with pytest.raises(TypeError, match="generator"):
        cube.sample(2, generator=3)
    with pytest.raises(TypeError, match="dtype"):
        cube.sample(2, dtype=torch.int32)


# ----------------------------------------------------------------- moving along the chart


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.5))
def test_move_recentres_the_chart(seed, scale):
    cube = Cube()
    gen = torch.Generator().manual_seed(seed)
    points = cube.sample(3, gen, dtype=torch.float64)
    theta = scale * torch.randn(3, 6, generator=gen, dtype=torch.float64)
    moved = cube.move(points, theta)
    zero = torch.zeros_like(theta)
    assert (cube.input(moved, zero) - cube.input(points, theta)).abs().max() < 1e-13
    assert (cube.target(moved, zero) - cube.target(points, theta)).abs().max() < 1e-14
    assert torch.equal(cube.move(points, zero)[:, 3:], points[:, 3:])
    assert (cube.move(points, zero) - points).abs().max() < 1e-15


def test_rotation_vector_inverts_rotation_matrix():
    from manifoldtrain.manifolds._rotation import rotation_matrix, rotation_vector

    gen = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen, dtype=torch.float64), dim=1)
    angle = torch.rand(500, 1, generator=gen, dtype=torch.float64) * (math.pi - 1e-6)
    w = torch.cat([axis * angle, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[0, 1e-10, 0]], dtype=torch.float64)])
    assert (rotation_vector(rotation_matrix(w)) - w).abs().max() < 1e-12
    # Near pi the vector is defined up to sign; the matrix round-trips.
    near_pi = axis[:5] * math.pi
    assert (rotation_matrix(rotation_vector(rotation_matrix(near_pi))) - rotation_matrix(near_pi)).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_through_move_are_finite_at_theta_zero(dtype):
    """d/dtheta input(move(p, theta), 0) at theta = 0, also at the identity rotation (w = 0),
    by autograd and by torch.func.jvp: finite, equal to the derivative of input(p, theta) itself
    and to the analytic d1 (checked by finite differences elsewhere); move's result still
    reproduces input(p, theta)."""
    cube = Cube()
    points = cube.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
    # Zero rotation vector. (Not pose 0 itself: there the front corner sits exactly on the centre
    # pixel, where input's own forward-mode derivative is NaN in float32, move or not.)
    identity = torch.tensor([[0.0, 0.0, 0.0, 0.1, -0.05, 0.0], [0.0, 0.0, 0.0, 0.05, 0.08, 0.2]], dtype=torch.float64)
    points = torch.cat([points, identity]).to(dtype)
    n = points.shape[0]
    zero = torch.zeros(n, 6, dtype=dtype)
    d1 = cube.jets(points, order=1)[0].d1.sum((-2, -1))  # [n, 6]
    scale = d1.abs().max()
    same = (1e-12 if dtype == torch.float64 else 1e-5) * scale
    analytic = (1e-10 if dtype == torch.float64 else 2e-4) * scale

    theta = zero.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cube.input(cube.move(points, theta), zero).sum(), theta)
    direct = zero.clone().requires_grad_(True)
    (grad_direct,) = torch.autograd.grad(cube.input(points, direct).sum(), direct)
    assert torch.isfinite(grad).all()
    assert (grad - grad_direct).abs().max() <= same
    assert (grad - d1).abs().max() <= analytic

    for k in range(6):
        v = torch.zeros(n, 6, dtype=dtype)
        v[:, k] = 1.0
        _, dimage = torch.func.jvp(lambda t: cube.input(cube.move(points, t), zero), (zero,), (v,))
        assert (dimage.sum((-2, -1)) - d1[:, k]).abs().max() <= analytic

    # move alone, at pose 0 too: its derivatives in theta and in the pose are finite.
    points0 = torch.cat([points, torch.zeros(1, 6, dtype=dtype)])
    zero0 = torch.zeros(n + 1, 6, dtype=dtype)
    jac = torch.func.jacfwd(lambda t: cube.move(points0, t))(zero0)
    assert torch.isfinite(jac).all()
    theta0, pose0 = zero0.clone().requires_grad_(True), points0.clone().requires_grad_(True)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(cube.move(pose0, theta0).sum(), (theta0, pose0)))
    # At pose 0, moving by theta = (x, y, z, a, b, c) gives w = (a, b, c), t = (x, y, z) to first order.
    swap = torch.eye(6, dtype=dtype).roll(3, dims=1)
    assert (jac[-1, :, -1] - swap).abs().max() <= 10 * torch.finfo(dtype).eps

    theta = 0.05 * torch.randn(n, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    match = 1e-13 if dtype == torch.float64 else 1e-5
    assert (cube.input(cube.move(points, theta), zero) - cube.input(points, theta)).abs().max() < match
    assert (cube.target(cube.move(points, theta), zero) - cube.target(points, theta)).abs().max() < match


def test_gradient_through_move_matches_finite_differences():
    cube = Cube()
    identity = torch.tensor([[0.0, 0.0, 0.0, 0.1, -0.05, 0.0]], dtype=torch.float64)  # zero rotation
    points = torch.cat([cube.sample(2, torch.Generator().manual_seed(3), dtype=torch.float64), identity])
    zero = torch.zeros(3, 6, dtype=torch.float64)
    weights = torch.rand(3, 41, 41, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def loss(theta):  # per sample
        return (cube.input(cube.move(points, theta), zero) * weights).sum((-2, -1))

    theta = zero.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(theta).sum(), theta)
    step, eye = 1e-5, torch.eye(6, dtype=torch.float64)
    fd = torch.stack([loss(zero + step * eye[k]) - loss(zero - step * eye[k]) for k in range(6)], dim=1) / (2 * step)
    assert (grad - fd).abs().max() <= 1e-7 * fd.abs().max()


def test_rotation_vector_derivatives_at_the_identity():
    from manifoldtrain.manifolds._rotation import rotation_matrix, rotation_vector

    for dtype in (torch.float32, torch.float64):
        eye = torch.eye(3, dtype=dtype)
        for w in (torch.zeros(3, dtype=dtype), torch.tensor([1e-5, 0.0, 0.0], dtype=dtype)):
            roundtrip = lambda w: rotation_vector(rotation_matrix(w))  # noqa: E731
            for jac in (torch.func.jacfwd(roundtrip)(w), torch.func.jacrev(roundtrip)(w)):
                assert (jac - eye).abs().max() < 10 * torch.finfo(dtype).eps
            # The identity rotation's second derivatives too (the series branch): zero.
            assert torch.func.jacfwd(torch.func.jacfwd(roundtrip))(w).abs().max() < 1e-6


def test_move_checks_theta():
    cube = Cube()
    p = torch.zeros(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="theta: expected finite"):
        cube.move(p, torch.tensor([[0.0] * 6, [0.0, 0, 0, float("nan"), 0, 0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"theta: expected shape \[2, 6\]"):
        cube.move(p, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="theta: expected dtype torch.float64"):
        cube.move(p, torch.zeros(2, 6, dtype=torch.float32))
    with pytest.raises(ValueError, match="points: .*in front of the camera"):
        cube.move(torch.tensor([[0.0, 0, 0, 0, 0, 4.7]], dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64))


def test_far_and_near_parts_take_the_same_branch():
    """Regression: at this float32 pose a pixel has |h| = |k| to rounding for one edge end; the
    far part and the Owen's T part once decided |k| > |h| from differently rounded values and
    the pixel was off by 2 T(m, 1) = 0.028."""
    pose = [float.fromhex(v) for v in (
        "-0x1.644a24p-2", "0x1.6775bcp-3", "0x1.9aa798p-6", "0x1.8a9ca6p-2", "-0x1.69c7dcp-4", "0x1.0285aap-2"
    )]
    cube = Cube()
    p32 = torch.tensor([pose], dtype=torch.float32)
    exact = cube.jets(p32.double(), order=0)[0].value
    assert (cube.jets(p32, order=0)[0].value.double() - exact).abs().max() < 1e-5
    assert (cube.input(p32, torch.zeros(1, 6)).double() - exact).abs().max() < 1e-5


def test_float32_images_match_float64_on_many_poses():
    cube = Cube()
    points = cube.sample(2000, torch.Generator().manual_seed(11), dtype=torch.float64)
    err = (cube.jets(points.float(), order=0)[0].value.double() - cube.jets(points, order=0)[0].value).abs()
    assert err.max() < 1e-5


WIDE = Cube(max_angle=math.pi, translation_radius=0.3)


def visibility_margin(cube: Cube, points: torch.Tensor) -> torch.Tensor:
    """``[n]``: how far (in local coordinates, to first order) each pose is from turning a face
    edge-on, where a face appears or disappears and the image is not differentiable."""
    from manifoldtrain.manifolds.cube import _FACE_INDEX

    def shoelace(theta):  # [n, 6] faces: twice the signed screen area; visible where < 0
        poly = cube._project(cube._corners(points, theta))[:, torch.tensor(_FACE_INDEX)]
        nxt = poly.roll(-1, dims=2)
        return ((nxt[..., 0] - poly[..., 0]) * (nxt[..., 1] + poly[..., 1])).sum(-1)

    theta = torch.zeros_like(points)
    jac = torch.func.jacfwd(shoelace)(theta)  # [n, 6 faces, n, 6 coordinates]
    n = len(points)
    grad = jac[torch.arange(n), :, torch.arange(n)]  # [n, 6 faces, 6 coordinates]
    return (shoelace(theta).abs() / grad.norm(dim=-1).clamp_min(1e-300)).min(-1).values


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32))
@example(247289)
def test_arbitrary_rotations_any_number_of_visible_faces(seed):
    """Poses far outside the data distribution: any rotation (1, 2 or 3 faces visible).

    The second derivatives are compared with torch.func's to 1e-9 of their scale, not the
    default 1e-10: at seed 247289 (pinned above) they differed by 1.3e-10 of the scale at a
    pixel next to a projected corner, and it is torch.func's nested jvp through the image that
    is ill-conditioned there: under relative perturbations of 1e-13 of the pose its value at
    that pixel moves by 2.8e-8 (1.1e-10 of the scale), the analytic jets' by 3.6e-11."""
    from manifoldtrain.testing import check_default_jets, check_finite_differences

    points = WIDE.sample(2, torch.Generator().manual_seed(seed), dtype=torch.float64)
    zero = torch.zeros(2, 6, dtype=torch.float64)
    assert (WIDE.input(points, zero) - WIDE.reference_input(points, zero)).abs().max() < 1e-13
    check_default_jets(WIDE, points, rtol=(1e-12, 1e-10, 1e-9))
    # Finite differences (steps up to 1e-2 per coordinate) are only meaningful where no face
    # turns edge-on within the stencil; see test_edge_on_face_is_not_differentiable. The poses
    # too close to edge-on are left out of this check, not the example (an assume() here threw
    # away 3 in 5 examples after their costly check above; both of the pinned seed's pass).
    clear = visibility_margin(WIDE, points) > 0.05
    if seed == 247289:
        assert bool(clear.all())
    if clear.any():
        check_finite_differences(WIDE, points[clear], rtol=(1e-12, 1e-8, 1e-7))


def test_edge_on_face_is_not_differentiable():
    """A pose hypothesis once drew (seed 13713): face 0 of the first point is 3e-4 (to first order) from
    edge-on. The analytic jets still equal torch.func's (the same one-sided function), but
    finite differences straddle the face's appearance and disagree: this is the pose the
    margin above excludes, not an error of the jets."""
    from manifoldtrain.testing import check_default_jets, check_finite_differences

    points = WIDE.sample(2, torch.Generator().manual_seed(13713), dtype=torch.float64)
    margin = visibility_margin(WIDE, points)
    assert margin[0] < 1e-3 and margin[1] > 0.05
    check_default_jets(WIDE, points)
    check_finite_differences(WIDE, points[1:], rtol=(1e-12, 1e-8, 1e-7))
    report = check_finite_differences(WIDE, points[:1], rtol=(1e-12, 1e-8, 1e-7), raise_on_failure=False)
    assert not report.passed


def test_one_face_seen_head_on():
    """Rotate the corner-on base orientation back so that face 4 faces the camera."""
    from manifoldtrain.manifolds._rotation import axis_rotation, rotation_vector
    from manifoldtrain.testing import check_finite_differences

    cube = Cube()
    # The base orientation M (corner-on); the pose R = M^T undoes it (row vectors: V M R = V).
    m = torch.eye(3, dtype=torch.float64)
    for axis, angle in zip((2, 0, 1), cube.base_angles):
        m = m @ axis_rotation(axis, torch.tensor(angle, dtype=torch.float64))
    tilt = axis_rotation(0, torch.tensor(0.05, dtype=torch.float64))  # a little off head-on
    w = rotation_vector(m.T @ tilt)
    points = torch.cat([w, torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64)])[None]
    image, _ = cube.jets(points, order=0)
    visible = cube._face_weights(cube._project(cube._posed_corners(points)))[0]
    assert int((visible > 0).sum()) in (1, 2)
    zero = torch.zeros(1, 6, dtype=torch.float64)
    assert (image.value - cube.reference_input(points, zero)).abs().max() < 1e-13
    check_finite_differences(cube, points, rtol=(1e-12, 1e-8, 1e-7))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_torch_func_jets_with_pixel_centres_on_an_edge_line(dtype, rtol):
    """An axis-aligned cube pitched about x and moved so that an edge lies exactly on the centre
    row (h == 0 for 11 pixels, inside and beyond the edge, no face edge-on): the torch.func
    jets of ``input`` must match the analytic ``jets`` there too. They used to lose the
    derivative of the angle term across h = 0 (errors of 1.4 on d1, 61 on d2)."""
    cube = Cube(image_size=11, base_angles=(0.0, 0.0, 0.0))
    points = torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    base = cube.base_corners(dtype)
    edge = [i for i in range(8) if base[i, 1] > 0 and base[i, 2] > 0]  # the front face's top edge
    y = cube._posed_corners(points)[0, edge, 1]
    assert y[0] == y[1]
    points[0, 4] = -y[0]  # translate it onto the plane y = 0, which holds the camera: v = 0 exactly
    uv = cube._project(cube._corners(points, torch.zeros_like(points)))
    assert (uv[0, edge, 1] == 0).all() and cube.pixel_grid(dtype)[1][5, 0] == 0
    assert (cube._face_weights(uv) > 0).sum() == 2  # the edge is shared by two visible faces
    analytic, _ = cube.jets(points.double())
    torch_func, _ = cube.default_jets(points)
    for k in (1, 2):
        got, want = torch_func.components()[k].double(), analytic.components()[k]
        assert torch.isfinite(got).all()
        err = (got - want).abs().amax()
        assert err <= rtol * want.abs().amax(), (k, err.item())
