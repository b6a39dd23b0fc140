"""The term protocol: one pass for every term, unbiased random directions, users' own terms."""

import statistics

import attrs
import pytest
import torch

from conftest import requires_cuda
from manifoldtrain import Jet
from manifoldtrain.config import config_from_dict, config_to_dict
from manifoldtrain.data import generate_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.network_jets import nested_jvp_rows, network_jet, taylor_rows
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, LossScales, Objective, Rows, Term, ValueTerm
from manifoldtrain.training import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint

from custom_term import CurvaturePenalty  # examples/custom_term.py: a user's own term

f64 = torch.float64


def problem(n=64, d=4, n_in=6, n_out=3, seed=0):
    """Random jets and a tanh network that fits them badly (a non-trivial error matrix)."""
    g = torch.Generator().manual_seed(seed)
    x = Jet(*(torch.randn(s, generator=g, dtype=f64) for s in [(n, n_in), (n, d, n_in), (n, d * (d + 1) // 2, n_in)]))
    y = Jet(*(torch.randn(s, generator=g, dtype=f64) for s in [(n, n_out), (n, d, n_out), (n, d * (d + 1) // 2, n_out)]))
    model = build_model(MLPConfig(hidden=(16, 16)), x.value, y.value, seed=seed)
    return model, x, y, LossScales.from_data(x, y)


@pytest.mark.parametrize("k", [1, 3])
def test_random_directions_are_unbiased_estimates_of_the_full_terms(k):
    """For both orders, the mean over many draws of the random-direction term lies within a few
    standard errors of the full term on the same batch and network (same normaliser)."""
    model, x, y, scales = problem()
    with torch.no_grad():
        full = Objective.second_order(weights=(1.0, 1.0, 1.0)).losses(model, x, y, scales)
        rand = Objective.second_order(weights=(1.0, 1.0, 1.0), directions=k)
        g = torch.Generator().manual_seed(k)
        draws = [rand.losses(model, x, y, scales, generator=g) for _ in range(600)]
    for order in (1, 2):
        samples = [float(dr[f"d{order} ({k} random)"]) for dr in draws]
        mean, se = statistics.fmean(samples), statistics.stdev(samples) / len(samples) ** 0.5
        exact = float(full[f"d{order} (full)"])
        assert abs(mean - exact) < 4 * se, (order, mean, exact, se)
        assert se < 0.1 * exact  # the test has the power to see a bias of a few percent


@pytest.mark.parametrize("k", [1, 2])
def test_the_grid_of_pairs_is_an_unbiased_estimate_of_the_full_term(k):
    """Every (u_a, v_b) of the grid is an independent pair: the mean over draws is the full term."""
    model, x, y, scales = problem()
    with torch.no_grad():
        exact = float(Objective((DerivativeTerm(2),)).losses(model, x, y, scales)["d2 (full)"])
        grid = Objective((DerivativeTerm(2, directions=k, grid=True),))
        g = torch.Generator().manual_seed(k)
        samples = [float(grid.losses(model, x, y, scales, generator=g)[f"d2 ({k}x{k} grid)"]) for _ in range(600)]
    mean, se = statistics.fmean(samples), statistics.stdev(samples) / len(samples) ** 0.5
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert se < 0.1 * exact


def test_the_full_grid_of_orthogonal_pairs_is_the_full_term():
    """k = d: U and V are scaled rotations, so sum_ab (u_a^T E v_b)^2 = d^2 |E|_F^2 for every draw."""
    model, x, y, scales = problem(d=4)
    with torch.no_grad():
        exact = float(Objective((DerivativeTerm(2),)).losses(model, x, y, scales)["d2 (full)"])
        for seed in range(3):
            got = float(Objective((DerivativeTerm(2, directions=4, grid=True),)).losses(
                model, x, y, scales, generator=torch.Generator().manual_seed(seed))["d2 (4x4 grid)"])
            assert got == pytest.approx(exact, rel=1e-10)
        # Pairs (u_a, v_a) alone are not: the grid is what makes it exact.
        pairs = float(Objective((DerivativeTerm(2, directions=4),)).losses(
            model, x, y, scales, generator=torch.Generator().manual_seed(0))["d2 (4 random)"])
        assert pairs != pytest.approx(exact, rel=1e-3)


def test_grid_rows_and_settings():
    # 2k first-order rows (u shared with the first-order term), k^2 mixed rows.
    assert count_rows(Objective.second_order(directions=2, grid=True)) == (4, 4)
    assert count_rows(Objective.second_order(directions=3, grid=True)) == (6, 9)
    with pytest.raises(ValueError, match="grid: only for order 2 with random directions"):
        DerivativeTerm(2, grid=True)
    with pytest.raises(ValueError, match="grid: only for order 2"):
        DerivativeTerm(1, directions=2, grid=True)
    with pytest.raises(TypeError, match="grid: expected True or False, got 1"):
        DerivativeTerm(2, directions=2, grid=1)
    # TOML: the setting round-trips like any field of a term.
    table = config_to_dict(config_from_dict({"objective": {"terms": [
        {"kind": "value"}, {"kind": "derivative", "order": 2, "directions": 2, "grid": True}]}}))
    assert table["objective"]["terms"][1]["grid"] is True
    assert config_from_dict(table).objective.terms[1] == DerivativeTerm(2, directions=2, grid=True)


def test_the_square_form_would_be_biased():
    """The old estimator (v^T E v along one direction) fails the same test: the test can fail."""
    from manifoldtrain.objectives import random_directions

    model, x, y, scales = problem()
    sx, sy = scales.scale_jet(x), scales.scale_jet(y)
    with torch.no_grad():
        pred = network_jet(model, sx)
        exact = float(Objective((DerivativeTerm(2),)).losses(model, x, y, scales)["d2 (full)"])
        g = torch.Generator().manual_seed(0)
        samples = []
        for _ in range(600):
            v = random_directions(len(x), 1, 4, g)
            samples.append(float((pred.mixed(v, v) - sy.mixed(v, v)).pow(2).mean() / 16 / scales.energy[2]))
    mean, se = statistics.fmean(samples), statistics.stdev(samples) / len(samples) ** 0.5
    assert abs(mean - exact) > 4 * se


def count_rows(objective, d=6, seed=0):
    """(first-order rows, second-order rows) that one call of the objective passes through the network."""
    model, x, y, scales = problem(d=d, seed=seed)
    seen = []

    def rows_fn(model, value, tangents, second=None, pairs=None):
        seen.append((tangents.shape[1], 0 if second is None else second.shape[1]))
        return taylor_rows(model, value, tangents, second, pairs)

    objective.losses(model, x, y, scales, generator=torch.Generator().manual_seed(0), rows_fn=rows_fn)
    assert len(seen) == 1  # one pass for every term
    return seen[0]


def test_terms_share_one_pass_and_their_rows():
    assert count_rows(Objective.second_order()) == (6, 21)  # 1 + d + d(d+1)/2 rows, d1 shared
    assert count_rows(Objective.second_order(directions=2)) == (4, 2)  # 1 + 3k: u shared by both terms
    assert count_rows(Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2, directions=1)))) == (8, 1)
    assert count_rows(Objective((DerivativeTerm(1, directions=2), CurvaturePenalty(directions=2)))) == (4, 2)
    # A user's term asking for the same mixed rows as the built-in one: passed once.
    assert count_rows(Objective((ValueTerm(), DerivativeTerm(2, directions=2), CurvaturePenalty(directions=2)))) == (4, 2)
    assert count_rows(Objective((ValueTerm(), DerivativeTerm(2, directions=1), CurvaturePenalty(directions=2)))) == (6, 3)


def test_nested_jvp_rows_give_the_same_losses():
    model, x, y, scales = problem()
    for objective in (Objective.second_order(), Objective.second_order(directions=2)):
        a = objective.losses(model, x, y, scales, generator=torch.Generator().manual_seed(1))
        b = objective.losses(model, x, y, scales, generator=torch.Generator().manual_seed(1), rows_fn=nested_jvp_rows)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-14)


def test_bad_terms_and_requests_are_named():
    class NotAttrs(Term):
        weight = 1.0
        name = "plain"

        def loss(self, batch, rows):
            return batch.value.sum()

    with pytest.raises(TypeError, match="must be an attrs class"):
        Objective((NotAttrs(),))
    with pytest.raises(ValueError, match="curvature penalty.weight"):
        Objective((ValueTerm(), CurvaturePenalty(weight=-1.0)))

    @attrs.frozen
    class BadPairs(Term):
        weight: float = 1.0
        data_order = 1
        name = "bad pairs"

        def request(self, batch):
            return Rows(batch.inputs.d1, batch.inputs.d1[:, :1], torch.tensor([[0, 99]]))

        def loss(self, batch, rows):
            return rows.out_second.sum()

    model, x, y, scales = problem()
    with pytest.raises(ValueError, match="bad pairs: pairs must be"):
        Objective((BadPairs(),)).losses(model, x, y, scales)
    with pytest.raises(ValueError, match="second, pairs"):
        Rows(x.d1, x.d2)


def test_a_users_term_trains_configures_checkpoints_and_resumes(tmp_path):
    cube = Cube(image_size=9, extent=0.5, sigma=0.08)
    train, test = generate_jets(cube, 40, seed=0, progress=False).split(8, seed=0)
    objective = Objective((ValueTerm(), DerivativeTerm(1), CurvaturePenalty(weight=1e-2, directions=2)))

    def trainer(epochs):
        model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
        return Trainer(model, objective, train, test, TrainConfig(epochs=epochs, batch_size=8, progress=False),
                       checkpoint_dir=tmp_path)

    first = trainer(2)
    history = first.fit()
    # Resume (here of a finished run: it loads the user's term's run and continues to its end).
    resumed = trainer(2)
    resumed.fit()
    assert resumed.epoch == 2 and resumed.steps == first.steps and resumed.history.records == history.records
    for a, b in zip(first.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert set(history.records[-1]["losses"]) == {"value", "d1 (full)", "curvature penalty"}
    assert history.records[-1]["losses"]["curvature penalty"] > 0
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["objective"]["terms"][2]["kind"] == "custom_term:CurvaturePenalty"
    assert state["normalisers"]["curvature penalty"] == pytest.approx(first.scales.energy[2])
    with pytest.raises(ValueError, match=r"objective.terms\[2\].weight: 0.01 in the checkpoint, 0.02 now"):
        Trainer(first.model, Objective((ValueTerm(), DerivativeTerm(1), CurvaturePenalty(weight=2e-2, directions=2))),
                train, test, first.config, checkpoint_dir=tmp_path).fit()
    # TOML: the term by its import path, round trip.
    table = config_to_dict(config_from_dict({"objective": {"terms": [
        {"kind": "value"}, {"kind": "custom_term:CurvaturePenalty", "weight": 0.5, "directions": 3}]}}))
    assert table["objective"]["terms"][1] == {"kind": "custom_term:CurvaturePenalty", "weight": 0.5, "directions": 3}
    assert config_from_dict(table).objective.terms[1] == CurvaturePenalty(weight=0.5, directions=3)


class CountingMetric:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, data):
        self.calls += 1
        with torch.no_grad():
            return {"mean_abs_output": float(model(data.inputs.value).abs().mean())}


def test_metrics_are_recorded_and_checked():
    cube = Cube(image_size=9, extent=0.5, sigma=0.08)
    train, test = generate_jets(cube, 32, seed=0, progress=False).split(8, seed=0)
    model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
    from manifoldtrain.evaluation import JetRMSE

    metric = CountingMetric()
    cfg = TrainConfig(epochs=2, batch_size=8, progress=False)
    history = Trainer(model, Objective.value(), train, test, cfg, metrics=(JetRMSE(), metric)).fit()
    assert metric.calls == 2 and set(history.last_test) == {"rmse", "rmse_d1", "rmse_d2", "mean_abs_output"}
    with pytest.raises(ValueError, match="more than one metric reports"):
        Trainer(model, Objective.value(), train, test, cfg, metrics=(metric, metric)).fit()
    with pytest.raises(TypeError, match="must return a dict"):
        Trainer(model, Objective.value(), train, test, cfg, metrics=(lambda m, d: 1.0,)).fit()
    relu = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(81, 4), torch.nn.ReLU(), torch.nn.Linear(4, 9))
    with pytest.raises(TypeError, match="ReLU"):  # early, when the trainer is built
        Trainer(relu, Objective.value(), train, test, cfg)
    Trainer(relu, Objective.value(), train, test, cfg, metrics=(JetRMSE(order=0),))  # values only: fine


def test_value_training_needs_no_derivative_data():
    cube = Cube(image_size=9, extent=0.5, sigma=0.08)
    train = generate_jets(cube, 16, seed=0, order=0, progress=False)
    model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
    trainer = Trainer(model, Objective.value(), train, None, TrainConfig(epochs=1, batch_size=8, progress=False))
    assert trainer.scales.coordinate == () and len(trainer.scales.energy) == 1
    trainer.fit()
    with pytest.raises(ValueError, match="train: expected jets of order >= 1"):
        Trainer(model, Objective.first_order(), train)


def test_trainer_step_is_the_training_step():
    """Driving Trainer.batch/step by hand gives the same weights as fit() on the same batches."""
    cube = Cube(image_size=9, extent=0.5, sigma=0.08)
    train = generate_jets(cube, 24, seed=0, progress=False)
    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, seed=4)

    def make():
        model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
        return Trainer(model, Objective.second_order(directions=1), train, None, cfg)

    auto = make()
    auto.fit()
    manual = make()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(train), generator=manual.generator).split(cfg.batch_size):
            losses = manual.step(manual.batch(idx))
            assert set(losses) == set(manual.objective.names)
    assert manual.steps == auto.steps == 6
    for a, b in zip(auto.model.parameters(), manual.model.parameters()):
        assert torch.equal(a, b)


def test_targets_linear_in_the_coordinates_train_second_order_in_float32():
    """Second-derivative targets that all vanish: the d2 term falls back to the reference
    scale with a warning naming it, trains finitely in float32, and second-order training
    is at least as accurate as value training at equal epochs."""
    from toy_manifolds import Blob

    data = generate_jets(Blob(), 400, seed=0, progress=False)
    assert float(data.targets.d2.abs().max()) == 0.0
    train, test = data.split(200, seed=0)
    with pytest.warns(UserWarning, match=r"d2 \(full\): the training targets have \(near\) vanishing derivatives of order 2"):
        scales = LossScales.from_data(train.inputs, train.targets)
        norm = Objective.second_order().normalisers(scales)["d2 (full)"]
    assert norm > 1e-6 * scales.energy[0] and norm == scales.target_energy(0) * scales.input_energy[2] / scales.input_energy[0]
    rmse = {}
    for name, objective in (("value", Objective.value()), ("second", Objective.second_order())):
        model = build_model(MLPConfig(hidden=(32, 32)), train.inputs.value, train.targets.value, seed=0)
        cfg = TrainConfig(epochs=40, batch_size=32, learning_rate=3e-3, progress=False)
        with pytest.warns(UserWarning) if name == "second" else _no_warning():
            history = Trainer(model, objective, train, test, cfg).fit()
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history.records)
        rmse[name] = history.last_test["rmse"]
    assert rmse["second"] <= rmse["value"], rmse


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_a_scale_set_by_hand_replaces_the_normaliser(tmp_path):
    model, x, y, scales = problem()
    by_hand = Objective((DerivativeTerm(2, scale=2.5),))
    assert by_hand.normalisers(scales) == {"d2 (full)": 2.5}
    assert config_from_dict({"objective": {"terms": [{"kind": "derivative", "order": 2, "scale": 2.5}]}}).objective == by_hand
    with pytest.raises(ValueError, match="scale"):
        DerivativeTerm(1, scale=0.0)


def test_a_non_finite_loss_names_the_term_and_a_fitting_remedy():
    cube = Cube(image_size=9, extent=0.5, sigma=0.08)
    train = generate_jets(cube, 16, seed=0, order=1, progress=False)
    model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
    objective = Objective((ValueTerm(), DerivativeTerm(1, scale=1e-45)))  # 0 in float32: the term overflows
    trainer = Trainer(model, objective, train, None, TrainConfig(epochs=1, batch_size=8, progress=False))
    with pytest.raises(FloatingPointError, match=r"term 'd1 \(full\)' = inf became non-finite at epoch 1, step 1 .*"
                                                 r"the normaliser of 'd1 \(full\)' is 1e-45.*set that term's scale"):
        trainer.fit()


def test_orthogonal_directions_keep_the_mean_and_cut_the_spread():
    """k = d orthogonal directions make the first-order estimate exact; each direction is still
    uniform on the sphere (the unbiasedness tests above run with them)."""
    from manifoldtrain.objectives import random_directions

    model, x, y, scales = problem(d=4)
    with torch.no_grad():
        exact = float(Objective((DerivativeTerm(1),)).losses(model, x, y, scales)["d1 (full)"])
        got = float(Objective((DerivativeTerm(1, directions=4),)).losses(
            model, x, y, scales, generator=torch.Generator().manual_seed(3))["d1 (4 random)"])
    assert got == pytest.approx(exact, rel=1e-12)
    v = random_directions(3, 5, 4, torch.Generator().manual_seed(0))
    gram = torch.einsum("nki,nli->nkl", v[:, :4], v[:, :4])
    torch.testing.assert_close(gram, 4 * torch.eye(4, dtype=f64).expand(3, 4, 4))
    torch.testing.assert_close(v.norm(dim=-1), torch.full((3, 5), 2.0, dtype=f64))


def test_random_draws_need_a_cpu_generator():
    """Directions are drawn on the CPU (the same numbers on any device), then moved."""
    from manifoldtrain.objectives import random_directions

    model, x, y, scales = problem(d=4)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        random_directions(3, 1, 4, 7)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        Objective((DerivativeTerm(1, directions=1),)).losses(model, x, y, scales, generator=7)


@requires_cuda
def test_a_cuda_generator_is_named():
    model, x, y, scales = problem(d=4)
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator .* on cuda"):
        Objective((DerivativeTerm(1, directions=1),)).losses(model, x, y, scales,
                                                             generator=torch.Generator(device="cuda"))
