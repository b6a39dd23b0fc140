"""Network jets: the Taylor-mode fast path against nested torch.func.jvp, and against finite differences."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifoldtrain import Jet, chart_jet, num_pairs
from manifoldtrain.manifolds import Cube
from manifoldtrain.network_jets import check_jet_model, directional_network_jet, network_jet, network_jet_nested
from manifoldtrain.nn import GELU, SMOOTH_ACTIVATIONS, Affine, ConvNetConfig, MLPConfig, build_model

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


@pytest.mark.parametrize("activation", sorted(SMOOTH_ACTIVATIONS))
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


def test_directional_jets_contract_the_full_jets():
    x = random_jet(4, 6, (10,))
    model = build_model(MLPConfig(hidden=(12,), activation="softplus"), x.value, torch.randn(4, 3, dtype=f64))
    v = torch.randn(4, 5, 6, dtype=f64)
    value, d1, d2 = directional_network_jet(model, x, v)
    full = network_jet(model, x)
    e1, e2 = full.directional(v)
    torch.testing.assert_close(value, full.value)
    torch.testing.assert_close(d1, e1)
    torch.testing.assert_close(d2, e2)
    _, d1_only, none = directional_network_jet(model, x.truncate(1), v)
    torch.testing.assert_close(d1_only, e1)
    assert none is None


def test_float32_and_gradients_flow():
    x = random_jet(3, 2, (4,), dtype=torch.float32)
    model = build_model(MLPConfig(hidden=(5,)), x.value, torch.randn(3, 2))
    out = network_jet(model, x)
    assert out.dtype == torch.float32
    (out.value.pow(2).sum() + out.d2.pow(2).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("layer", [torch.nn.ReLU(), torch.nn.ELU(), torch.nn.LeakyReLU(), torch.nn.Tanh(), torch.nn.BatchNorm1d(4)])
def test_layers_without_a_jet_rule_are_rejected_by_name(layer):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), layer, torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match=type(layer).__name__):
        network_jet(model, random_jet(2, 2, (3,), dtype=torch.float32))
    with pytest.raises(TypeError, match="twice-differentiable"):
        check_jet_model(model)


def test_bad_arguments():
    x = random_jet(2, 3, (4,))
    model = build_model(MLPConfig(hidden=(5,)), x.value, torch.randn(2, 2, dtype=f64))
    with pytest.raises(TypeError, match="nn.Sequential"):
        network_jet(torch.nn.Linear(4, 2), x)
    with pytest.raises(TypeError, match="input_jet"):
        network_jet(model, x.value)
    with pytest.raises(ValueError, match=r"directions: expected shape \[2, \*, 3\]"):
        directional_network_jet(model, x, torch.randn(2, 1, 4, dtype=f64))
    with pytest.raises(ValueError, match="order >= 1"):
        directional_network_jet(model, x.truncate(0), torch.randn(2, 1, 3, dtype=f64))


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
    with pytest.raises(TypeError, match="config"):
        build_model("mlp", inputs, targets)


def test_gelu_derivatives_match_autograd():
    v = torch.linspace(-4, 4, 101, dtype=f64, requires_grad=True)
    f, df, d2f = GELU().derivatives(v)
    torch.testing.assert_close(f, torch.nn.functional.gelu(v))
    (g,) = torch.autograd.grad(f.sum(), v, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), v)
    torch.testing.assert_close(df, g)
    torch.testing.assert_close(d2f, h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
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
