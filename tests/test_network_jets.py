"""Network jets: the Taylor-mode fast path against nested torch.func.jvp, and against finite differences."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldtrain import Jet, chart_jet, num_pairs
from manifoldtrain.manifolds import Cube
from manifoldtrain.network_jets import (
    check_jet_model,
    nested_jvp_rows,
    network_jet,
    network_jet_nested,
    register_jet_rule,
    taylor_rows,
)
from manifoldtrain.nn import (
    GELU, SMOOTH_ACTIVATIONS, Affine, ConvNetConfig, MLPConfig, ModelConfig, SmoothActivation, build_model,
)
from manifoldtrain.registry import ACTIVATIONS
from manifoldtrain.testing import check_activation

from conftest import requires_cuda

f64 = torch.float64


def random_jet(n, d, shape, order=2, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, *shape, generator=g, dtype=dtype), torch.randn(n, d, *shape, generator=g, dtype=dtype)]
    parts.append(torch.randn(n, num_pairs(d), *shape, generator=g, dtype=dtype))
    return Jet(*parts[: order + 1])


def assert_jets_close(a, b, rtol=1e-11):
    assert a.order == b.order
    for x, y in zip(a.components(), b.components()):
        assert x.shape == y.shape
        assert (x - y).abs().max() <= rtol * y.abs().max() + 1e-14


USERS_ACTIVATION = "custom_model:Snake"  # examples/custom_model.py, on the tests' path


@pytest.mark.parametrize("activation", sorted(SMOOTH_ACTIVATIONS) + [USERS_ACTIVATION])
def test_taylor_equals_nested_jvp_for_every_activation(activation):
    x = random_jet(5, 3, (7,))
    model = build_model(MLPConfig(hidden=(11, 6), activation=activation), x.value, torch.randn(5, 4, dtype=f64), seed=1)
    assert_jets_close(network_jet(model, x), network_jet_nested(model, x))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2), st.integers(0, 10**6))
def test_taylor_equals_nested_jvp_any_dimension_and_order(d, order, seed):
    x = random_jet(4, d, (5,), order=order, seed=seed)
    model = build_model(MLPConfig(hidden=(8,), activation="gelu"), x.value, torch.randn(4, 3, dtype=f64), seed=seed)
    assert_jets_close(network_jet(model, x), network_jet_nested(model, x))


def test_taylor_equals_nested_jvp_for_the_conv_net_on_cube_jets():
    cube = Cube()
    x, y = cube.jets(cube.sample(3, torch.Generator().manual_seed(0), dtype=f64))
    model = build_model(ConvNetConfig(channels=(3, 4), hidden=(8,), activation="silu"), x.value, y.value)
    assert_jets_close(network_jet(model, x), network_jet_nested(model, x))


def test_network_jet_is_the_derivative_along_the_chart():
    """The network's jet along a chart equals nested torch.func of N(chart(theta)) (the definition)."""
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(2, 5, generator=g, dtype=f64) for _ in range(3))

    def chart(theta):  # a curved 2-parameter family of inputs in R^5
        return a + theta[:, :1] * b + torch.sin(theta[:, 1:2]) * c + theta[:, :1] * theta[:, 1:2] * a**2

    model = build_model(MLPConfig(hidden=(9, 9), activation="tanh"), torch.randn(8, 5, dtype=f64), torch.randn(8, 2, dtype=f64))
    theta = torch.zeros(2, 2, dtype=f64)
    x = chart_jet(chart, theta)
    truth = chart_jet(lambda t: model(chart(t)), theta)
    assert_jets_close(network_jet(model, x), truth)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(0, 10**6))
def test_taylor_rows_equal_nested_jvp_rows_for_any_tangents_and_pairs(r, p, seed):
    g = torch.Generator().manual_seed(seed)
    x, t, tt = (torch.randn(3, *s, 6, generator=g, dtype=f64) for s in [(), (r,), (p,)])
    pairs = torch.randint(r, (p, 2), generator=g)
    model = build_model(MLPConfig(hidden=(7, 5), activation="sine"), x, torch.randn(3, 2, dtype=f64), seed=seed)
    fast = taylor_rows(model, x, t, tt if p else None, pairs if p else None)
    slow = nested_jvp_rows(model, x, t, tt if p else None, pairs if p else None)
    for a, b in zip(fast, slow):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_mixed_rows_contract_the_full_jet():
    """Rows along (x_u, x_v) with second-order input x_uv give N''[x_u, x_v] + N' x_uv = u^T (N o x)'' v."""
    x = random_jet(4, 6, (10,))
    model = build_model(MLPConfig(hidden=(12,), activation="softplus"), x.value, torch.randn(4, 3, dtype=f64))
    g = torch.Generator().manual_seed(5)
    u, v = torch.randn(4, 3, 6, generator=g, dtype=f64), torch.randn(4, 3, 6, generator=g, dtype=f64)
    pairs = torch.tensor([[0, 3], [1, 4], [2, 5]])
    value, d1, d2 = taylor_rows(model, x.value, torch.cat([x.along(u), x.along(v)], 1), x.mixed(u, v), pairs)
    full = network_jet(model, x)
    torch.testing.assert_close(value, full.value)
    torch.testing.assert_close(d1, torch.cat([full.along(u), full.along(v)], 1))
    torch.testing.assert_close(d2, torch.einsum("nki,nijo,nkj->nko", u, full.d2_matrix(), v))


def test_float32_taylor_pass_is_as_accurate_as_nested_jvp_at_training_sizes():
    """Float32 at the tolerances users train with: cube jets through a 3x256 tanh MLP, both paths
    against the float64 jet; the Taylor pass must be about as accurate as nested jvp (1e-5 relative)."""
    cube = Cube(image_size=21, extent=0.6, sigma=0.05)
    x, y = cube.jets(cube.sample(8, torch.Generator().manual_seed(2), dtype=f64))
    model = build_model(MLPConfig(hidden=(256, 256, 256)), x.value, y.value, seed=0)
    truth = network_jet_nested(model, x)
    fast, slow = network_jet(model.float(), x.to(torch.float32)), network_jet_nested(model, x.to(torch.float32))
    for t, a, b in zip(truth.components(), fast.components(), slow.components()):
        scale = t.abs().max()
        err_fast, err_slow = (a.double() - t).abs().max() / scale, (b.double() - t).abs().max() / scale
        assert err_fast < 1e-5, err_fast
        assert err_fast < 4 * err_slow + 1e-6, (err_fast, err_slow)


def test_float32_and_gradients_flow():
    x = random_jet(3, 2, (4,), dtype=torch.float32)
    model = build_model(MLPConfig(hidden=(5,)), x.value, torch.randn(3, 2))
    out = network_jet(model, x)
    assert out.dtype == torch.float32
    (out.value.pow(2).sum() + out.d2.pow(2).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("layer", [torch.nn.ReLU(), torch.nn.ELU(), torch.nn.LeakyReLU(), torch.nn.BatchNorm1d(4)])
def test_layers_without_a_jet_rule_are_rejected_by_path_and_name(layer):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sequential(torch.nn.Identity(), layer), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match=rf"layer model\.1\.1 \({type(layer).__name__}\)"):
        network_jet(model, random_jet(2, 2, (3,), dtype=torch.float32))
    with pytest.raises(TypeError, match="twice-differentiable"):
        check_jet_model(model)
    # No silent fallback: the caller chooses nested jvp explicitly.
    if not isinstance(layer, torch.nn.BatchNorm1d):
        assert network_jet_nested(model, random_jet(2, 2, (3,), dtype=torch.float32)).order == 2


@pytest.mark.parametrize("layer", [torch.nn.Tanh(), torch.nn.Sigmoid(), torch.nn.SiLU(), torch.nn.GELU()])
def test_torch_smooth_activations_have_jet_rules(layer):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), layer, torch.nn.Linear(4, 2)).double()
    x = random_jet(3, 2, (3,))
    assert_jets_close(network_jet(model, x), network_jet_nested(model, x))
    with pytest.raises(TypeError, match="approximate"):
        network_jet(torch.nn.Sequential(torch.nn.GELU(approximate="tanh")), x)


def test_users_extend_the_taylor_pass_by_rule_or_method():
    class Scale(torch.nn.Module):  # linear: every row scales
        def forward(self, x):
            return 3 * x

    class Residual(torch.nn.Module):  # x + f(x): rows add
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())

        def forward(self, x):
            return x + self.f(x)

        def jet_rows(self, rows, layout):
            from manifoldtrain.network_jets import _apply

            return rows + _apply(self.f, rows, layout)

    model = torch.nn.Sequential(Scale(), Residual(), torch.nn.Linear(3, 2)).double()
    x = random_jet(3, 2, (3,))
    with pytest.raises(TypeError, match=r"model\.0 \(Scale\)"):
        network_jet(model, x)
    register_jet_rule(Scale, lambda layer, rows, layout: 3 * rows)
    assert_jets_close(network_jet(model, x), network_jet_nested(model, x))
    with pytest.raises(TypeError, match="layer_type"):
        register_jet_rule(int, lambda *a: None)


def test_bad_arguments():
    x = random_jet(2, 3, (4,))
    model = build_model(MLPConfig(hidden=(5,)), x.value, torch.randn(2, 2, dtype=f64))
    with pytest.raises(TypeError, match="input_jet"):
        network_jet(model, x.value)
    with pytest.raises(TypeError, match="model's parameters are torch.float64"):
        network_jet(model, x.to(torch.float32))
    with pytest.raises(ValueError, match=r"tangents: expected shape \[2, \*, 4\]"):
        taylor_rows(model, x.value, torch.randn(2, 1, 5, dtype=f64))
    with pytest.raises(ValueError, match="pairs"):
        taylor_rows(model, x.value, x.d1, x.d2[:, :2], torch.tensor([[0, 7], [0, 1]]))
    with pytest.raises(ValueError, match="pairs"):
        taylor_rows(model, x.value, x.d1, x.d2[:, :2])


def test_model_building_and_configs():
    inputs, targets = torch.rand(10, 6, 6), torch.randn(10, 3)
    mlp = build_model(MLPConfig(hidden=(4, 4)), inputs, targets, seed=0)
    again = build_model(MLPConfig(hidden=(4, 4)), inputs, targets, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(mlp.state_dict().values(), again.state_dict().values()))
    assert mlp(inputs).shape == (10, 3)
    conv = build_model(ConvNetConfig(channels=(2,), hidden=(4,)), inputs, targets)
    assert conv(inputs).shape == (10, 3)
    # Output layer puts predictions in target units; input layer normalises.
    assert isinstance(mlp[0], Affine) and isinstance(mlp[-1], Affine)
    with pytest.raises(ValueError, match="activation"):
        MLPConfig(activation="relu")
    with pytest.raises(ValueError, match="hidden"):
        MLPConfig(hidden=(0,))
    with pytest.raises(ValueError, match="ConvNetConfig needs images"):
        build_model(ConvNetConfig(), torch.rand(10, 6), targets)
    with pytest.raises(ValueError, match="inputs: expected at least 2 samples"):
        build_model(MLPConfig(), inputs[:1], targets[:1])
    with pytest.raises(TypeError, match=r"config: expected a ModelConfig \(MLPConfig, ConvNetConfig or a subclass"):
        build_model("mlp", inputs, targets)

    class Broken(ModelConfig):
        def layers(self, input_shape, n_outputs):
            return [torch.nn.Flatten(), "tanh"]

    with pytest.raises(TypeError, match="config: Broken.layers returned str; expected nn.Modules"):
        build_model(Broken(), inputs, targets)


def test_gelu_derivatives_match_autograd():
    v = torch.linspace(-4, 4, 101, dtype=f64, requires_grad=True)
    f, df, d2f = GELU().derivatives(v)
    torch.testing.assert_close(f, torch.nn.functional.gelu(v))
    (g,) = torch.autograd.grad(f.sum(), v, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), v)
    torch.testing.assert_close(df, g)
    torch.testing.assert_close(d2f, h)


@requires_cuda
def test_cuda_network_jets_and_a_training_step_match_cpu():
    from manifoldtrain.data import generate_jets
    from manifoldtrain.objectives import Objective
    from manifoldtrain.training import Trainer, TrainConfig

    data = generate_jets(Cube(image_size=9, extent=0.5, sigma=0.08), 24, seed=0, dtype=f64, progress=False)
    model = build_model(MLPConfig(hidden=(8,)), data.inputs.value, data.targets.value)
    gpu = build_model(MLPConfig(hidden=(8,)), data.inputs.value.cuda(), data.targets.value.cuda())
    assert_jets_close(network_jet(gpu, data.inputs.to("cuda")).to("cpu"), network_jet(model, data.inputs))
    for m, d in ((model, data), (gpu, data.to("cuda"))):
        Trainer(m, Objective.second_order(), d, None, TrainConfig(epochs=1, batch_size=8, progress=False)).fit()
    for a, b in zip(model.state_dict().values(), gpu.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(-8.0, 8.0), min_size=1, max_size=12))
@pytest.mark.parametrize("name", ACTIVATIONS.names + [USERS_ACTIVATION])
def test_every_activations_derivatives_match_finite_differences(name, values):
    # Tolerances are relative to the largest reference over the points, so a grid goes with the
    # drawn points (alone, a point like 7.0 has a GELU'' of -4e-10, below what differences resolve).
    points = torch.cat([torch.linspace(-6.0, 6.0, 25, dtype=f64), torch.tensor(values, dtype=f64)])
    check_activation(ACTIVATIONS.get(name)(), points)


def test_check_activation_finds_a_wrong_derivative_and_names_what_is_wrong():
    class WrongSecond(SmoothActivation):  # tanh'' is -2 tanh (1 - tanh^2); this misses the factor 2
        def derivatives(self, v):
            t = torch.tanh(v)
            return t, 1 - t * t, -t * (1 - t * t)

    report = check_activation(WrongSecond(), raise_on_failure=False)
    assert [i.passed for i in report.items] == [True, True, False] and "FAIL derivatives.d2" in str(report)
    with pytest.raises(AssertionError, match="WrongSecond.derivatives vs forward"):
        check_activation(WrongSecond())

    class Flat(SmoothActivation):
        def derivatives(self, v):
            return v, torch.ones(()), torch.zeros_like(v)

    with pytest.raises(AssertionError, match=r"Flat.derivatives: f' has shape \[\] .* expected the same"):
        check_activation(Flat())
    with pytest.raises(TypeError, match="activation: expected a SmoothActivation instance, got Tanh"):
        check_activation(torch.nn.Tanh())
    tanh = ACTIVATIONS.get("tanh")()
    with pytest.raises(ValueError, match="points: expected at least one point"):
        check_activation(tanh, torch.tensor([], dtype=f64))
    with pytest.raises(TypeError, match="rtol: expected three tolerances"):
        check_activation(tanh, rtol=1e-6)
    with pytest.raises(ValueError, match=r"rtol\[0\]: expected a number >= 0"):
        check_activation(tanh, rtol=(-1.0, 1.0, 1.0))


def test_a_users_activation_by_import_path_in_a_config_and_its_errors(tmp_path):
    from manifoldtrain.config import ExperimentConfig, load_config, save_config

    config = ExperimentConfig(model=MLPConfig(hidden=(6,), activation=USERS_ACTIVATION))
    save_config(config, tmp_path / "c.toml")
    assert 'activation = "custom_model:Snake"' in (tmp_path / "c.toml").read_text()
    again = load_config(tmp_path / "c.toml")
    assert again.model == config.model
    model = build_model(again.model, torch.randn(4, 5, dtype=f64), torch.randn(4, 2, dtype=f64))
    assert [type(m).__name__ for m in model.modules()].count("Snake") == 1
    with pytest.raises(ValueError, match=r"activation: unknown activation 'relu'; expected one of \['gelu'"):
        MLPConfig(activation="relu")
    with pytest.raises(TypeError, match="activation: 'torch.nn:ReLU' is not a subclass of SmoothActivation"):
        ConvNetConfig(activation="torch.nn:ReLU")
    with pytest.raises(ValueError, match="activation: cannot import module 'nowhere'"):
        MLPConfig(activation="nowhere:Act")
    with pytest.raises(TypeError, match=r"activation: 'manifoldtrain.nn:SmoothActivation' does not implement derivatives"):
        MLPConfig(activation="manifoldtrain.nn:SmoothActivation")
