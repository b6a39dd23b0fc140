"""A user's own problem, safely: bad inputs give errors that name the argument, say what was
expected and how to fix it, never a raw traceback from deep inside torch, numpy or pickle."""

import math

import attrs
import pytest
import torch
from torch import nn

from manifoldtrain import Jet
from manifoldtrain.config import config_from_dict, load_config
from manifoldtrain.data import cached_jets, fingerprint, generate_jets, generate_shards, load_jets, save_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.network_jets import nested_jvp_rows, network_jet, network_jet_nested, taylor_rows
from manifoldtrain.nn import Affine, MLPConfig, Tanh, build_model
from manifoldtrain.objectives import DerivativeTerm, Objective, Term, ValueTerm

from toy_manifolds import Sphere

f64 = torch.float64


def jet_of(shape=(6, 6), n=3, d=2, dtype=f64, seed=0):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(n, *shape, generator=g, dtype=dtype)
    return Jet(value, torch.randn(n, d, *shape, generator=g, dtype=dtype),
               torch.randn(n, d * (d + 1) // 2, *shape, generator=g, dtype=dtype))


def mlp_for(jet, m=2):
    return build_model(MLPConfig(hidden=(5,)), jet.value, torch.randn(len(jet), m, dtype=jet.value.dtype))


# ------------------------------------------------------------------ 1. the network's jet


@pytest.mark.parametrize("fn", [network_jet, network_jet_nested])
@pytest.mark.parametrize("component", ["value", "d1", "d2"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_network_jet_rejects_non_finite_inputs_by_name(fn, component, bad):
    x = jet_of()
    model = mlp_for(x)
    parts = dict(value=x.value.clone(), d1=x.d1.clone(), d2=x.d2.clone())
    parts[component].view(-1)[7] = bad
    with pytest.raises(ValueError, match=rf"input_jet\.{component}: expected finite values, found 1 NaN or infinite"):
        fn(model, Jet(**parts))


def test_order_zero_jet_and_rows_reject_non_finite_inputs():
    x = jet_of()
    model = mlp_for(x)
    value = x.value.clone()
    value[1, 2, 3] = math.nan
    with pytest.raises(ValueError, match=r"input_jet\.value: expected finite values"):
        network_jet(model, Jet(value))
    with pytest.raises(ValueError, match=r"^value: expected finite values"):
        taylor_rows(model, value, x.d1)
    tangents = x.d1.clone()
    tangents[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"^tangents: expected finite values"):
        nested_jvp_rows(model, x.value, tangents)
    second = x.d2[:, :1].clone()
    second[2, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"^second: expected finite values"):
        taylor_rows(model, x.value, x.d1, second, torch.tensor([[0, 1]]))


def test_huge_but_finite_inputs_are_not_mistaken_for_non_finite():
    # The fast check sums each tensor; a sum that overflows must not be reported as NaN/inf.
    x = jet_of(dtype=torch.float32)
    model = mlp_for(x).float()
    big = Jet(torch.full_like(x.value, 3e38), x.d1, x.d2)
    out = network_jet(model, big)
    assert out.value.shape == (3, 2)


def test_input_shape_is_checked_against_the_models_first_layers():
    x = jet_of((6, 6))
    model = mlp_for(x)  # Affine(scale, shift [6, 6]), Flatten, Linear(36, 5), ...
    wrong = jet_of((5, 5))
    with pytest.raises(ValueError, match=r"input_jet\.value: expected inputs \[n, 6, 6\] for the model \(its layer model\.0 \(Affine\)"):
        network_jet(model, wrong)
    with pytest.raises(ValueError, match=r"^value: expected inputs \[n, 6, 6\]"):
        nested_jvp_rows(model, wrong.value, wrong.d1)
    # Without normalisation: the first Linear's in_features against the (flattened) input.
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), Tanh()).double()
    with pytest.raises(ValueError, match=r"value: expected inputs \[n, \.\.\., 16\] for the model \(its layer model\.1 \(Linear\)"):
        taylor_rows(plain, wrong.value, wrong.d1)
    linear = nn.Sequential(nn.Linear(4, 3), Tanh()).double()
    with pytest.raises(ValueError, match=r"input_jet\.value: expected inputs \[n, \.\.\., 4\]"):
        network_jet(linear, jet_of((5,)))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), Tanh()).double()
    with pytest.raises(ValueError, match=r"input_jet\.value: expected inputs \[n, 1, \*, \*\]"):
        network_jet(conv, jet_of((2, 5, 5)))
    assert network_jet(conv, jet_of((1, 5, 5))).d2.shape == (3, 3, 2, 3, 3)
    nested = nn.Sequential(nn.Sequential(nn.Identity(), nn.Unflatten(1, (1, 5))), nn.Conv2d(1, 2, 3), Tanh()).double()
    assert network_jet(nested, jet_of((5, 5))).value.shape == (3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"model\.0\.1 \(Unflatten\)"):
        network_jet(nested, jet_of((4, 5)))


def test_layers_of_unknown_effect_end_the_shape_check():
    class Pad(nn.Module):  # changes the shape: the check must not guess past it
        def forward(self, x):
            return torch.cat([x, x[:, :1]], dim=1)

        def jet_rows(self, rows, layout):
            return torch.cat([rows, rows[:, :, :1]], dim=2)

    model = nn.Sequential(Pad(), nn.Linear(5, 2), Tanh()).double()
    assert network_jet(model, jet_of((4,))).d2.shape == (3, 3, 2)


def test_dtype_device_and_kind_of_inputs_are_named():
    x = jet_of()
    model = mlp_for(x)
    with pytest.raises(TypeError, match=r"input_jet\.value: the model's parameters are torch\.float64 on cpu, the inputs torch\.float32"):
        network_jet(model, x.to(torch.float32))
    with pytest.raises(TypeError, match=r"^value: expected dtype float32 or float64, got torch\.int64"):
        taylor_rows(model, x.value.long(), x.d1.long())
    with pytest.raises(TypeError, match=r"^tangents: expected dtype torch\.float64 on cpu like value"):
        taylor_rows(model, x.value, x.d1.float())
    # A model with buffers only (no parameters) still names the dtype mismatch.
    buffers_only = nn.Sequential(Affine(torch.ones(6, 6, dtype=f64), torch.zeros(6, 6, dtype=f64)))
    with pytest.raises(TypeError, match="model's parameters are torch.float64"):
        network_jet(buffers_only, x.to(torch.float32))


def test_training_step_still_works_after_the_checks():
    data = generate_jets(Cube(image_size=7, extent=0.5, sigma=0.08), 8, seed=0, dtype=f64, progress=False)
    model = build_model(MLPConfig(hidden=(6,)), data.inputs.value, data.targets.value)
    from manifoldtrain.objectives import LossScales

    scales = LossScales.from_data(data.inputs, data.targets)
    objective = Objective.second_order(directions=2)
    losses = objective.losses(model, data.inputs, data.targets, scales, torch.Generator().manual_seed(0))
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------ 2. damaged jet caches


@pytest.fixture(scope="module")
def small_data():
    return generate_jets(Cube(image_size=7, extent=0.5, sigma=0.08), 4, seed=0, order=1, progress=False)


@pytest.mark.parametrize("keep", [0, 40, 200, -4])
def test_truncated_cache_names_the_file_and_the_remedy(tmp_path, small_data, keep):
    path = save_jets(small_data, tmp_path / "cache")
    victim = path / "input_d1.npy"
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(ValueError, match=r"input_d1\.npy is truncated or damaged") as err:
        load_jets(path)
    assert str(victim) in str(err.value) and "write the cache again (`manifoldtrain generate`" in str(err.value)


def test_damaged_cache_files_name_the_file_and_the_remedy(tmp_path, small_data):
    path = save_jets(small_data, tmp_path / "cache")
    points = path / "points.npy"
    points.write_bytes(b"garbage!" + points.read_bytes()[8:])  # the .npy magic string destroyed
    with pytest.raises(ValueError, match=r"points\.npy is truncated or damaged.*manifoldtrain generate"):
        load_jets(path)

    path = save_jets(small_data, tmp_path / "cache2")
    meta = path / "meta.json"
    meta.write_text(meta.read_text()[:30])
    with pytest.raises(ValueError, match=r"meta\.json is not valid JSON.*manifoldtrain generate"):
        load_jets(path)

    path = save_jets(small_data, tmp_path / "cache3")
    meta = path / "meta.json"
    meta.write_text(meta.read_text().replace('"shapes"', '"shapez"'))
    with pytest.raises(ValueError, match=r"meta\.json lacks the order or the array shapes.*manifoldtrain generate"):
        load_jets(path)


# ------------------------------------------------------------------ 3. objective weights


@pytest.mark.parametrize(
    "weights, error, message",
    [
        ((1, 1), ValueError, r"weights: expected 3 numbers \(value, d1, d2\), got 2"),
        ((1, 1, 1, 1), ValueError, r"weights: expected 3 numbers"),
        (0.5, TypeError, r"weights: expected a tuple of 3 numbers"),
        ((1, "a", 0), TypeError, r"weights\[1\] \(d1\): expected a real number, got str"),
        ((1, None, 0), TypeError, r"weights\[1\] \(d1\): expected a real number"),
        ((True, 1, 1), TypeError, r"weights\[0\] \(value\): expected a real number, got bool"),
        ((1, -1, 0), ValueError, r"weights\[1\] \(d1\): expected a number >= 0"),
        ((1, 1, math.nan), ValueError, r"weights\[2\] \(d2\): expected a finite number"),
        ((1, math.inf, 1), ValueError, r"weights\[1\] \(d1\): expected a finite number"),
        ((0, 0, 0), ValueError, r"weights: expected at least one weight > 0"),
    ],
)
def test_second_order_weights_are_checked(weights, error, message):
    with pytest.raises(error, match=message):
        Objective.second_order(weights=weights)


def test_first_order_weights_and_all_zero_terms():
    with pytest.raises(ValueError, match=r"weights: expected 2 numbers \(value, d1\)"):
        Objective.first_order(weights=(1, 1, 1))
    with pytest.raises(ValueError, match=r"weights: expected at least one weight > 0"):
        Objective.first_order(weights=(0, 0.0))
    with pytest.raises(ValueError, match=r"terms: every term's weight is 0 \(value\.weight = 0\.0, d1 \(full\)\.weight = 0\.0\)"):
        Objective((ValueTerm(0.0), DerivativeTerm(1, weight=0.0)))
    with pytest.raises(ValueError, match=r"objective\.terms|terms: every term's weight is 0"):
        config_from_dict({"objective": {"terms": [{"kind": "value", "weight": 0}]}})
    # Some zero weights are fine (a term switched off), and the weights come back as floats.
    assert [t.weight for t in Objective.second_order(weights=(1, 0, 0)).terms] == [1.0, 0.0, 0.0]


# ------------------------------------------------------------------ 4. TOML configs


@attrs.frozen
class FlaggedTerm(Term):
    """A user's own term with a bool, an int, a float and a str setting."""

    weight: float = 1.0
    squared: bool = True
    repeats: int = 1
    label: str = "flagged"
    limit: float | None = None

    @property
    def name(self):
        return self.label

    def loss(self, batch, rows):
        return batch.value.pow(2).mean()


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("value", ['"false"', '"true"', '"no"', "0", "1"])
def test_a_non_bool_for_a_bool_is_an_error_naming_the_key(tmp_path, value):
    with pytest.raises(TypeError, match=r"train\.progress: expected a boolean \(true or false, without quotes\)"):
        load_config(write(tmp_path, f"[train]\nprogress = {value}\n"))
    assert load_config(write(tmp_path, "[train]\nprogress = false\n")).train.progress is False


def test_scalar_fields_of_any_attrs_config_are_checked(tmp_path):
    cases = [
        ("[data]\nn_train = true\n", r"data\.n_train: expected an integer, got bool True"),
        ("[data]\nn_train = 100.0\n", r"data\.n_train: expected an integer, got float 100\.0"),
        ('[data]\ncache_dir = 3\n', r"data\.cache_dir: expected a string, got int 3"),
        ('[manifold]\nkind = "cube"\nsigma = "0.03"\n', r"manifold\.sigma: expected a number, got the string '0\.03'"),
        ('[manifold]\nkind = "cube"\nimage_size = false\n', r"manifold\.image_size: expected an integer, got bool"),
        ('[model]\nkind = "mlp"\nactivation = 1\n', r"model\.activation: expected a string, got int 1"),
        ('[train]\ntime_budget = "10"\n', r"train\.time_budget: expected a number, got the string '10'"),
        ('[[objective.terms]]\nkind = "derivative"\norder = 1\ndirections = "2"\n',
         r"objective\.terms\[0\]\.directions: expected an integer, got the string '2'"),
        # a user's own term: its bool / int / str / optional float fields are checked the same way
        ('[[objective.terms]]\nkind = "test_bad_inputs:FlaggedTerm"\nsquared = "false"\n',
         r"objective\.terms\[0\]\.squared: expected a boolean .*; write squared = false"),
        ('[[objective.terms]]\nkind = "test_bad_inputs:FlaggedTerm"\nrepeats = true\n',
         r"objective\.terms\[0\]\.repeats: expected an integer, got bool True"),
        ('[[objective.terms]]\nkind = "test_bad_inputs:FlaggedTerm"\nlabel = 5\n',
         r"objective\.terms\[0\]\.label: expected a string"),
        ('[[objective.terms]]\nkind = "test_bad_inputs:FlaggedTerm"\nlimit = "1"\n',
         r"objective\.terms\[0\]\.limit: expected a number, got the string '1'"),
    ]
    for text, message in cases:
        with pytest.raises(TypeError, match=message):
            load_config(write(tmp_path, text))
    # Integers are fine where numbers are expected, and the user's term loads.
    config = load_config(write(tmp_path, '[train]\nlearning_rate = 1\n[[objective.terms]]\nkind = "test_bad_inputs:FlaggedTerm"\n'
                                         "squared = false\nrepeats = 3\nlimit = 2\n"))
    assert config.train.learning_rate == 1
    assert config.objective.terms[0].squared is False and config.objective.terms[0].limit == 2


@pytest.mark.parametrize(
    "text, shown",
    [("hidden = 8", "8"), ('hidden = "64"', "'64'"), ("hidden = []", r"\[\]"), ("hidden = [0]", r"\[0\]"),
     ("hidden = [true]", r"\[True\]"), ("hidden = [8.5]", r"\[8\.5\]")],
)
def test_hidden_must_be_a_list_of_positive_ints(tmp_path, text, shown):
    with pytest.raises(ValueError, match=rf"^model\.hidden: expected a non-empty list of positive ints, got {shown}$"):
        load_config(write(tmp_path, f'[model]\nkind = "mlp"\n{text}\n'))
    with pytest.raises(ValueError, match=r"model\.channels: expected a non-empty list of positive ints, got 16"):
        load_config(write(tmp_path, '[model]\nkind = "convnet"\nchannels = 16\n'))
    assert MLPConfig(hidden=range(1, 3)).hidden == (1, 2)


# ------------------------------------------------------------------ 5. the cube's settings and theta


@pytest.mark.parametrize(
    "kwargs",
    [{"half_size": 5.0}, {"camera_distance": 0.5}, {"camera_distance": 1.3}, {"translation_radius": 4.2},
     {"near_clip": 4.5}],
)
def test_cube_settings_that_reach_the_camera_are_rejected_on_construction(kwargs):
    with pytest.raises(ValueError, match=r"^camera_distance, half_size, translation_radius, near_clip: .*increase camera_distance"):
        Cube(**kwargs)


def test_cube_settings_at_the_limit_are_accepted():
    limit = math.sqrt(3.0) * 0.2 + 0.52 + 0.5
    cube = Cube(camera_distance=limit * (1 + 1e-9))
    points = cube.sample(64, torch.Generator().manual_seed(0), dtype=f64)
    cube.check_points(points)  # every sampled pose is valid
    with pytest.raises(ValueError, match="camera_distance, half_size"):
        Cube(camera_distance=limit * (1 - 1e-9))


@pytest.mark.parametrize("method", ["input", "target", "reference_input"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_theta_is_named(method, bad):
    cube = Cube(image_size=9)
    points = cube.sample(2, torch.Generator().manual_seed(0), dtype=f64)
    theta = torch.zeros(2, 6, dtype=f64)
    theta[1, 4] = bad
    with pytest.raises(ValueError, match=r"^theta: expected finite values, found 1 NaN or infinite entries"):
        getattr(cube, method)(points, theta)


def test_non_finite_theta_is_named_for_a_users_manifold_and_transforms_still_work():
    sphere = Sphere()
    points = sphere.sample(3, torch.Generator().manual_seed(0), dtype=f64)
    theta = torch.zeros(3, 2, dtype=f64)
    theta[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^theta: expected finite values"):
        sphere.input(points, theta)
    # Inside torch.func transforms the data-dependent check is skipped, so the default jets work.
    x, y = sphere.default_jets(points)
    assert torch.isfinite(x.d2).all() and torch.isfinite(y.d2).all()
    cube = Cube(image_size=9)
    x, _ = cube.default_jets(cube.sample(1, torch.Generator().manual_seed(1), dtype=f64), order=1)
    assert torch.isfinite(x.d1).all()


@pytest.mark.parametrize("make", [
    lambda tmp: generate_jets(None, 4, progress=False),
    lambda tmp: cached_jets(None, 4, tmp, progress=False),
    lambda tmp: generate_shards(None, 4, tmp / "cache", progress=False),
    lambda tmp: fingerprint(None, 4, 0, 2, torch.float32, torch.float64),
])
def test_data_generation_names_a_missing_manifold(tmp_path, make):
    # generate_shards(None, ...) failed with an AttributeError from inside fingerprint()
    with pytest.raises(TypeError, match="manifold: expected a Manifold, got NoneType"):
        make(tmp_path)
    assert not (tmp_path / "cache").exists()
