"""Data sets and caches, objectives, the training loop, checkpoints and resume, evaluation."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import attrs
import pytest
import torch

from manifoldtrain import Jet
from manifoldtrain.data import cached_jets, fingerprint, generate_jets, load_jets, save_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, LossScales, Objective, ValueTerm
from manifoldtrain.training import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint

from conftest import ROOT
from train_run import make_trainer

SMALL = Cube(image_size=9, extent=0.5, sigma=0.08)


@pytest.fixture(scope="module")
def small_data():
    return generate_jets(SMALL, 48, seed=1, progress=False)


# ----------------------------------------------------------------- data


def test_generate_jets_is_reproducible_and_matches_the_manifold(small_data):
    again = generate_jets(SMALL, 48, seed=1, progress=False)
    assert torch.equal(again.inputs.d2, small_data.inputs.d2)
    x, y = SMALL.jets(small_data.points[:4].double())
    torch.testing.assert_close(small_data.inputs.d2[:4], x.d2.float())
    torch.testing.assert_close(small_data.targets.d1[:4], y.d1.float())
    assert small_data.inputs.dtype == torch.float32
    other = generate_jets(SMALL, 48, seed=2, progress=False)
    assert not torch.equal(other.points, small_data.points)


def test_split_is_reproducible_and_disjoint(small_data):
    train, test = small_data.split(10, seed=4)
    train2, test2 = small_data.split(10, seed=4)
    assert len(train) == 38 and len(test) == 10
    assert torch.equal(test.points, test2.points)
    rows = {tuple(p.tolist()) for p in train.points} & {tuple(p.tolist()) for p in test.points}
    assert not rows
    assert not torch.equal(small_data.split(10, seed=5)[1].points, test.points)


def test_cache_round_trip_and_fingerprint(small_data, tmp_path):
    path = save_jets(small_data, tmp_path / "c")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "manifoldtrain-jets" and meta["shapes"]["input_d2"] == [48, 21, 9, 9]
    loaded = load_jets(path)
    for a, b in zip(loaded.inputs.components() + loaded.targets.components(), small_data.inputs.components() + small_data.targets.components()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="fingerprint"):
        load_jets(path, expected_fingerprint="0" * 64)


def test_cached_jets_never_reuses_a_stale_cache(tmp_path):
    a = cached_jets(SMALL, 8, tmp_path, seed=0, progress=False)
    assert len(list(tmp_path.iterdir())) == 1
    b = cached_jets(SMALL, 8, tmp_path, seed=0, progress=False)  # reused
    assert torch.equal(a.inputs.d2, b.inputs.d2)
    changed = Cube(image_size=9, extent=0.5, sigma=0.081)
    c = cached_jets(changed, 8, tmp_path, seed=0, progress=False)
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(c.inputs.d2, a.inputs.d2)
    keys = {fingerprint(SMALL, 8, 0, 2, torch.float32, torch.float64), fingerprint(SMALL, 8, 1, 2, torch.float32, torch.float64),
            fingerprint(SMALL, 9, 0, 2, torch.float32, torch.float64), fingerprint(SMALL, 8, 0, 1, torch.float32, torch.float64),
            fingerprint(SMALL, 8, 0, 2, torch.float64, torch.float64), fingerprint(changed, 8, 0, 2, torch.float32, torch.float64)}
    assert len(keys) == 6


def test_interrupted_generation_leaves_nothing_that_loads(small_data, tmp_path, monkeypatch):
    import numpy as np

    calls = {"n": 0}
    real_save = np.save

    def failing_save(file, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed ctrl-C half way
        real_save(file, arr)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_jets(small_data, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert not list(tmp_path.iterdir())  # the temporary directory is gone too
    with pytest.raises(FileNotFoundError, match="no jet cache at .*c: there is no such file or folder"):
        load_jets(tmp_path / "c")


def test_damaged_cache_is_refused(small_data, tmp_path):
    path = save_jets(small_data, tmp_path / "c")
    (path / "input_d2.npy").unlink()
    with pytest.raises(ValueError, match="lacks input_d2.npy"):
        load_jets(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_jets(path)


# ----------------------------------------------------------------- objectives


def test_loss_scales_balance_coordinates(small_data):
    scales = LossScales.from_data(small_data.inputs, small_data.targets)
    scaled = scales.scale_jet(small_data.inputs)
    rms = scaled.d1.double().transpose(0, 1).reshape(6, -1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.ones(6, dtype=torch.float64), rtol=1e-5, atol=0)
    # Targets of order 0 (value training on jets with derivatives): the statistics of the values.
    values_only = LossScales.from_data(small_data.inputs.truncate(0), small_data.targets.truncate(0))
    assert LossScales.from_data(small_data.inputs, small_data.targets.truncate(0)) == values_only


def test_losses_vanish_for_an_exact_network_and_random_directions_estimate_the_full_loss():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x = Jet(*(torch.randn(s, generator=g, dtype=torch.float64) for s in [(200, 5), (200, 4, 5), (200, 10, 5)]))
    y = Jet(*(c @ a.T for c in x.components()))
    model = torch.nn.Sequential(torch.nn.Linear(5, 3, bias=False)).double()
    model[0].weight.data = a.clone()
    scales = LossScales.from_data(x, y)
    objective = Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2)))
    assert all(v.item() < 1e-28 for v in objective.losses(model, x, y, scales).values())
    # Mixed full and random terms come from one pass.
    mixed = Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2, directions=3))).losses(model, x, y, scales, generator=g)
    assert set(mixed) == {"value", "d1 (full)", "d2 (3 random)"}


def test_objective_validation():
    with pytest.raises(ValueError, match="terms"):
        Objective(())
    with pytest.raises(TypeError, match="terms"):
        Objective(("value",))
    with pytest.raises(ValueError, match="once"):
        Objective((ValueTerm(), ValueTerm(weight=2.0)))
    with pytest.raises(ValueError, match="weights: expected 3 numbers"):
        Objective.second_order(weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="order"):
        DerivativeTerm(3)
    with pytest.raises(ValueError, match="weight"):
        ValueTerm(weight=-1.0)
    with pytest.raises(ValueError, match="directions"):
        DerivativeTerm(1, directions=0)


# ----------------------------------------------------------------- training


def _trainer(data, objective, tmp_path=None, **kw):
    train, test = data.split(12, seed=0)
    model = build_model(MLPConfig(hidden=(16,)), train.inputs.value, train.targets.value, seed=0)
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 12, "learning_rate": 3e-3, "progress": False, **kw})
    return Trainer(model, objective, train, test, cfg, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("objective", [Objective.value(), Objective.first_order(), Objective.second_order(),
                                       Objective.second_order(directions=1)], ids=lambda o: ",".join(o.names))
def test_every_objective_trains_with_the_same_loop(small_data, objective):
    trainer = _trainer(small_data, objective, epochs=4)
    # Training with any objective (random directions included) lowers the full objective.
    full = Objective(tuple(attrs.evolve(t, directions=None) if isinstance(t, DerivativeTerm) else t for t in objective.terms))
    x, y = trainer.train.inputs.to(torch.float32), trainer.train.targets.to(torch.float32)

    def full_loss():
        with torch.no_grad():
            return sum(full.losses(trainer.model, x.truncate(full.max_order), y.truncate(full.max_order), trainer.scales).values()).item()

    before = full_loss()
    history = trainer.fit()
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4]
    assert full_loss() < before
    assert set(history.records[0]["losses"]) == set(objective.names)
    assert history.last_test["rmse"] > 0 and history.last_test["rmse_d2"] > 0


def test_nan_is_detected_with_a_clear_message(small_data):
    data = small_data.to(torch.float32, copy=True)
    with pytest.raises(ValueError, match="targets: expected finite values"):
        bad = data.to(torch.float32, copy=True)
        bad.targets.value[0, 0] = float("nan")
        _trainer(bad, Objective.value())
    trainer = _trainer(data, Objective.value())
    trainer.train.inputs.value[3, 4, 4] = float("nan")  # data going bad after the model was built
    with pytest.raises(FloatingPointError, match=r"loss: term 'value' = nan became non-finite at epoch 1, step \d+"):
        trainer.fit()


def test_time_budget_stops_training(small_data):
    trainer = _trainer(small_data, Objective.value(), epochs=10_000, time_budget=0.5)
    t0 = time.perf_counter()
    trainer.fit()
    assert time.perf_counter() - t0 < 20
    assert trainer.seconds >= 0.5 and trainer.epoch < 10_000


def test_checkpoint_loads_with_weights_only(small_data, tmp_path):
    trainer = _trainer(small_data, Objective.first_order(), tmp_path)
    trainer.fit()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 3 and state["history"]["finished"]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == trainer.steps
    assert set(state["normalisers"]) == {"value", "d1 (full)"} and state["scales"]["energy"][0] > 0
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    # A finished run resumes to itself; a different run in the same directory is refused.
    again = _trainer(small_data, Objective.first_order(), tmp_path)
    again.fit()
    assert again.steps == trainer.steps
    with pytest.raises(ValueError, match=r"other settings \(objective.terms: "):
        _trainer(small_data, Objective.value(), tmp_path).fit()
    with pytest.raises(ValueError, match=r"train_config.learning_rate: 0.003 in the checkpoint, 0.01 now"):
        _trainer(small_data, Objective.first_order(), tmp_path, learning_rate=1e-2).fit()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """Kill a training subprocess mid-run (SIGKILL), resume it, compare with an uninterrupted run."""
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "train_run.py"), str(run_dir)], cwd=ROOT)
    ckpt = run_dir / CHECKPOINT_NAME
    deadline = time.time() + 120
    epoch = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                epoch = load_checkpoint(ckpt)["epoch"]
            except Exception:
                epoch = 0
            if epoch >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert 2 <= killed_at < 6

    resumed = make_trainer(run_dir)
    resumed.fit()
    straight = make_trainer(tmp_path / "straight")
    straight.fit()
    assert resumed.epoch == straight.epoch == 6
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history.records[-1]["loss"] == straight.history.records[-1]["loss"]


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=0.0)
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size=1.5)
    cfg = TrainConfig(learning_rate=1.0, final_lr_fraction=0.1, warmup_fraction=0.1)
    assert cfg.learning_rate_at(0.0) == 0 and math.isclose(cfg.learning_rate_at(0.1), 1.0)
    assert math.isclose(cfg.learning_rate_at(1.0), 0.1)


# ----------------------------------------------------------------- evaluation


def test_evaluate_computes_the_rmse(small_data):
    model = build_model(MLPConfig(hidden=(8,)), small_data.inputs.value, small_data.targets.value)
    m = evaluate(model, small_data, batch_size=7)
    with torch.no_grad():
        from manifoldtrain.network_jets import network_jet

        pred = network_jet(model, small_data.inputs)
    for got, a, b in zip((m.rmse, m.rmse_d1, m.rmse_d2), pred.components(), small_data.targets.components()):
        assert math.isclose(got, (a - b).double().pow(2).mean().sqrt().item(), rel_tol=1e-6)
    assert m.n == 48 and set(m.to_dict()) == {"rmse", "rmse_d1", "rmse_d2", "n", "jet", "per_output"}
    assert m.jet == "network_jet"
    # Per output: its own RMSE, the spread of its test targets, and their ratio; names y0, y1, ... by default.
    errors = (pred.value - small_data.targets.value).double()
    spread = small_data.targets.value.double().std(0, correction=0)
    assert list(m.per_output) == [f"y{i}" for i in range(9)]
    for i, row in enumerate(m.per_output.values()):
        assert math.isclose(row["rmse"], errors[:, i].pow(2).mean().sqrt().item(), rel_tol=1e-6)
        assert math.isclose(row["std"], spread[i].item(), rel_tol=1e-9)
        assert math.isclose(row["relative_rmse"], row["rmse"] / row["std"], rel_tol=1e-12)
    # The mean of the outputs' squared errors is the overall clean one.
    assert math.isclose(sum(r["rmse"] ** 2 for r in m.per_output.values()) / 9, m.rmse**2, rel_tol=1e-9)
    names = tuple(f"corner{k}_{a}" for k in (1, 2, 3) for a in "xyz")
    assert list(evaluate(model, small_data, output_names=names).per_output) == list(names)
    with pytest.raises(ValueError, match=r"output_names: expected 9 non-empty strings"):
        evaluate(model, small_data, output_names=names[:8])
    with pytest.raises(ValueError, match=r"output_names: expected distinct names, got 'a' more than once"):
        evaluate(model, small_data, output_names=("a",) * 9)
    # An output whose test targets do not vary has no relative RMSE (not a division by zero).
    keep = torch.tensor([0.0] + [1.0] * 8, dtype=small_data.targets.value.dtype)
    flat = attrs.evolve(small_data, targets=Jet(*(part * keep for part in small_data.targets.components())))
    assert evaluate(model, flat, order=0).per_output["y0"]["relative_rmse"] is None
    assert evaluate(model, small_data, order=0).rmse_d1 is None
    relu = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(81, 8), torch.nn.ReLU(), torch.nn.Linear(8, 9))
    with pytest.raises(TypeError, match=r"model\.2 \(ReLU\) has no jet rule"):  # no silent fallback
        evaluate(relu, small_data)
    from manifoldtrain.network_jets import network_jet_nested

    nested = evaluate(relu, small_data, jet_fn=network_jet_nested)  # chosen explicitly, and said so
    assert nested.rmse_d2 is not None and nested.jet == "network_jet_nested"
    assert evaluate(relu, small_data, order=0).jet == "forward"


@pytest.mark.parametrize("mode", [False, True])
def test_fit_leaves_the_denormal_mode_as_it_was(small_data, mode):
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    torch.set_flush_denormal(mode)
    try:
        _trainer(small_data, Objective.value(), epochs=1).fit()
        assert ((tiny * 1.0).item() == 0.0) == mode
    finally:
        torch.set_flush_denormal(False)


def test_random_directions_are_isotropic_on_the_sphere():
    from manifoldtrain.objectives import random_directions

    v = random_directions(20000, 2, 6, torch.Generator().manual_seed(0))
    assert v.dtype == torch.float64 and v.shape == (20000, 2, 6)
    torch.testing.assert_close(v.norm(dim=-1), torch.full((20000, 2), 6**0.5, dtype=torch.float64))
    cov = torch.einsum("nki,nkj->ij", v, v) / (2 * 20000)
    assert (cov - torch.eye(6, dtype=torch.float64)).abs().max() < 0.03


def test_energies_are_the_mean_squares_along_random_directions():
    """energy[1] = E[y_u^2] / d and energy[2] = E[y_uv^2] / d^2 for independent u, v (Monte Carlo):
    the random-direction terms share the full terms' normalisers."""
    from manifoldtrain.objectives import random_directions

    g = torch.Generator().manual_seed(1)
    x = Jet(*(torch.randn(s, generator=g, dtype=torch.float64) for s in [(50, 4), (50, 3, 4), (50, 6, 4)]))
    y = Jet(*(torch.randn(s, generator=g, dtype=torch.float64) for s in [(50, 2), (50, 3, 2), (50, 6, 2)]))
    scales = LossScales.from_data(x, y)
    ys = scales.scale_jet(y)
    u, v = random_directions(50, 4000, 3, g), random_directions(50, 4000, 3, g)
    assert abs(ys.along(u).pow(2).mean().item() / 3 / scales.energy[1] - 1) < 0.03
    assert abs(ys.mixed(u, v).pow(2).mean().item() / 9 / scales.energy[2] - 1) < 0.03
    values_only = LossScales.from_data(x.truncate(0), y.truncate(0))
    assert values_only.coordinate == () and values_only.energy == (scales.energy[0],)


def test_terms_can_join_later():
    g = torch.Generator().manual_seed(2)
    x = Jet(*(torch.randn(s, generator=g, dtype=torch.float64) for s in [(8, 4), (8, 2, 4), (8, 3, 4)]))
    y = Jet(*(torch.randn(s, generator=g, dtype=torch.float64) for s in [(8, 2), (8, 2, 2), (8, 3, 2)]))
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).double()
    objective = Objective((ValueTerm(), DerivativeTerm(1), DerivativeTerm(2, weight=0.5, start=0.5)))
    scales = LossScales.from_data(x, y)
    early = objective.losses(model, x, y, scales, progress=0.2)
    late = objective.losses(model, x, y, scales, progress=0.7)
    assert early["d2 (full)"].item() == 0 and late["d2 (full)"].item() > 0
    assert early["d1 (full)"].item() == late["d1 (full)"].item()
    with pytest.raises(ValueError, match="at least one term must start at 0"):
        Objective((DerivativeTerm(1, start=0.1),))
    with pytest.raises(ValueError, match="start"):
        DerivativeTerm(1, start=1.5)


def test_trainer_names_mismatched_data(small_data):
    train, _ = small_data.split(12, seed=0)
    other = generate_jets(Cube(image_size=7, extent=0.5, sigma=0.08), 8, seed=0, progress=False)
    model = build_model(MLPConfig(hidden=(4,)), train.inputs.value, train.targets.value)
    with pytest.raises(ValueError, match=r"test: its inputs have shape \[7, 7\]"):
        Trainer(model, Objective.value(), train, other)
    # A value-only test set is scored on values; it needs no coordinates.
    values_only = generate_jets(SMALL, 8, seed=1, order=0, progress=False)
    Trainer(model, Objective.second_order(), train, values_only)
    with pytest.raises(TypeError, match="train: expected a JetDataset"):
        Trainer(model, Objective.value(), train.inputs)
    with pytest.raises(ValueError, match="train: expected jets of order >= 2"):
        Trainer(model, Objective.second_order(), generate_jets(SMALL, 8, seed=0, order=1, progress=False))


def test_fingerprint_hashes_tensor_settings_by_content():
    """Canonical JSON of plain values; tensor-valued settings by a hash of their content."""
    import attrs as _attrs

    from manifoldtrain.manifold import Manifold

    @_attrs.frozen(eq=False)
    class Weighted(Manifold):
        weights: torch.Tensor
        param_dim, point_shape, input_shape, target_shape = 1, (1,), (3,), (1,)

        def sample(self, n, generator=None, *, dtype=None, device=None):
            return torch.rand(n, 1, generator=generator, dtype=dtype or torch.float64)

        def input(self, points, theta):
            return (points + theta) * self.weights

        def target(self, points, theta):
            return points + theta

    key = lambda m: fingerprint(m, 8, 0, 2, torch.float32, torch.float64)  # noqa: E731
    a, same, other = Weighted(torch.arange(3.0)), Weighted(torch.arange(3.0)), Weighted(torch.arange(3.0) + 1e-6)
    assert key(a) == key(same) != key(other)
    assert key(Weighted(torch.arange(3.0, dtype=torch.float64))) != key(a)  # the dtype is part of the content


def test_resume_names_what_differs_and_refuses_bad_checkpoints(small_data, tmp_path):
    trainer = _trainer(small_data, Objective.value(), tmp_path)
    trainer.fit()
    # Another architecture (activation) or model seed: named, not a traceback.
    train, test = small_data.split(12, seed=0)
    other = build_model(MLPConfig(hidden=(16,), activation="gelu"), train.inputs.value, train.targets.value, seed=0)
    with pytest.raises(ValueError, match=r"model_architecture.layers"):
        Trainer(other, Objective.value(), train, test, trainer.config, checkpoint_dir=tmp_path).fit()
    wider = build_model(MLPConfig(hidden=(17,)), train.inputs.value, train.targets.value, seed=0)
    with pytest.raises(ValueError, match=r"model_architecture"):
        Trainer(wider, Objective.value(), train, test, trainer.config, checkpoint_dir=tmp_path).fit()
    def with_extra(extra):
        return Trainer(trainer.model, Objective.value(), train, test, trainer.config, checkpoint_dir=tmp_path / "e",
                       extra=extra)

    with_extra({"model_seed": 0}).fit()
    with pytest.raises(ValueError, match=r"\(model_seed: 0 in the checkpoint, 1 now\)"):
        with_extra({"model_seed": 1}).fit()
    # Non-finite weights, a truncated file, a foreign file: named, with the remedy.
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    state["model"]["2.weight"] = state["model"]["2.weight"] * float("inf")
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"weights \['2.weight'\] hold NaN or inf"):
        _trainer(small_data, Objective.value(), tmp_path).fit()
    data = (tmp_path / CHECKPOINT_NAME).read_bytes()
    (tmp_path / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is damaged or not a manifoldtrain checkpoint .*--no-resume"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    (tmp_path / CHECKPOINT_NAME).write_text("hello")
    with pytest.raises(ValueError, match="damaged or not a manifoldtrain checkpoint") as info:
        load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert "weights_only=False" not in str(info.value)

