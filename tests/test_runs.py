"""Validation split, best checkpoint, early stopping, metrics.csv, and the everyday CLI flags."""

import csv
import json
import tomllib

import attrs

import pytest
import torch

from manifoldtrain import __version__
from manifoldtrain.cli import main
from manifoldtrain.config import config_from_dict, config_to_dict, load_config, save_config
from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.experiment import model_from_checkpoint, run_experiment, using_device
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import (BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, Trainer, TrainConfig, load_checkpoint,
                                   write_metrics_csv)

from config_helpers import cube_toml
from conftest import requires_cuda

SMALL = Cube(image_size=9, extent=0.5, sigma=0.08)

TOML = cube_toml(
    top={"model_seed": 3},
    n_train=40, n_test=16, data={"seed": 2},
    hidden=[12, 12],
    terms=({"kind": "value"}, {"kind": "derivative", "order": 1}),
    train={"epochs": 4, "batch_size": 8, "learning_rate": 0.01},
)


@pytest.fixture(scope="module")
def small_data():
    return generate_jets(SMALL, 48, seed=1, progress=False)


def _trainer(data, tmp_path=None, *, metrics=None, test=True, **kw):
    train, test_set = data.split(12, seed=0)
    model = build_model(MLPConfig(hidden=(16,)), train.inputs.value, train.targets.value, seed=0)
    cfg = TrainConfig(**{"epochs": 4, "batch_size": 12, "learning_rate": 3e-3, "progress": False, **kw})
    extra = {} if metrics is None else {"metrics": metrics}
    return Trainer(model, Objective.first_order(), train, test_set if test else None, cfg, checkpoint_dir=tmp_path, **extra)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------- validation split


def test_validation_is_a_fixed_fraction_of_the_training_data(small_data):
    a = _trainer(small_data, validation=0.25, seed=4)
    assert len(a.validation) == 9 and len(a.train) == 27  # round(0.25 * 36)
    train_pts = {tuple(p.tolist()) for p in a.train.points}
    val_pts = {tuple(p.tolist()) for p in a.validation.points}
    assert not train_pts & val_pts and len(train_pts | val_pts) == 36
    again = _trainer(small_data, validation=0.25, seed=4)
    assert torch.equal(again.validation.points, a.validation.points)
    other = _trainer(small_data, validation=0.25, seed=5)
    assert not torch.equal(other.validation.points, a.validation.points)
    none = _trainer(small_data)
    assert none.validation is None and len(none.train) == 36
    assert len(_trainer(small_data, validation=0.001).validation) == 1  # at least one sample


def test_validation_settings_are_checked(small_data):
    for value, message in ((1.0, r"validation: expected a fraction .* \[0, 1\)"), (-0.1, "validation: expected a number >= 0")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(validation=value)
    with pytest.raises(ValueError, match="patience: early stopping needs a validation set"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match="patience: expected an int >= 1"):
        TrainConfig(validation=0.1, patience=0)
    tiny = small_data.subset(slice(0, 14))  # 2 training samples once 12 are taken for the test
    with pytest.raises(ValueError, match="validation: holding out 0.9 of 2 training samples leaves none"):
        _trainer(tiny, validation=0.9)
    with pytest.raises(ValueError, match=r"best_metric: choosing the best model needs a validation number named "
                                         r"'rmse'; the metrics gave \['mae'\] \(set best_metric"):
        _trainer(small_data, metrics=[lambda model, data: {"mae": 1.0}], validation=0.2).fit()
    with pytest.raises(ValueError, match="best_metric: expected the name of a metric's number"):
        TrainConfig(best_metric="", validation=0.1)
    with pytest.raises(ValueError, match="best_metric: chooses the best model on a validation set"):
        TrainConfig(best_metric="rmse_d1")
    with pytest.raises(ValueError, match="best_metric: the validation number 'rmse_d1' is None: the metric computes"):
        _trainer(small_data, metrics=[lambda model, data: {"rmse": 1.0, "rmse_d1": None}], validation=0.2,
                 best_metric="rmse_d1").fit()
    config = config_from_dict({"train": {"validation": 0.2, "patience": 3}})
    assert config.train.validation == 0.2 and config.train.patience == 3


# ----------------------------------------------------------------- best model, early stopping


def test_best_model_is_kept_in_best_pt_and_in_the_checkpoint(small_data, tmp_path):
    # eval_overhead=None: the test set at every epoch too (validation is never skipped).
    trainer = _trainer(small_data, tmp_path, validation=0.25, epochs=6, learning_rate=3e-2, eval_overhead=None)
    snapshots = {}
    original = trainer._track_best

    def track(record):
        snapshots[trainer.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        original(record)

    trainer._track_best = track
    trainer.fit()
    records = trainer.history.records
    assert all("validation" in r and "test" in r for r in records)
    values = [r["validation"]["rmse"] for r in records]
    best_epoch = records[min(range(len(values)), key=values.__getitem__)]["epoch"]
    assert trainer.best["epoch"] == best_epoch and trainer.best["value"] == min(values)
    best = torch.load(tmp_path / BEST_NAME, weights_only=True)
    assert best["kind"] == "best" and best["epoch"] == best_epoch and "optimizer" not in best
    assert load_checkpoint(tmp_path / BEST_NAME)["best"]["validation"] == records[best_epoch - 1]["validation"]
    for name, tensor in best["model"].items():
        assert torch.equal(tensor, snapshots[best_epoch][name]), name
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["best"]["epoch"] == best_epoch and all(torch.equal(state["best"]["model"][k], v)
                                                        for k, v in best["model"].items())
    with pytest.raises(ValueError, match="best-model file .* cannot be resumed"):
        _trainer(small_data, validation=0.25, epochs=6, learning_rate=3e-2).load_state_dict(best)


class Worsening:
    """A validation 'rmse' that only gets worse after the first evaluation."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, data):
        self.calls += 1
        return {"rmse": float(self.calls)}


class Improving:
    """A validation number 'loss_like' that improves until the third evaluation, then worsens; its 'rmse' only worsens."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, data):
        self.calls += 1
        return {"rmse": float(self.calls), "loss_like": float(abs(self.calls - 3))}


def test_the_best_model_is_chosen_by_any_metrics_number(small_data, tmp_path):
    # A metric of one's own chooses: best_metric names its number (the rmse would pick epoch 1).
    trainer = _trainer(small_data, tmp_path, metrics=[Improving()], test=False, validation=0.25, patience=2,
                       epochs=20, best_metric="loss_like")
    trainer.fit()
    assert trainer.best["epoch"] == 3 and trainer.best["metric"] == "loss_like" and trainer.best["value"] == 0.0
    assert trainer.epoch == 5 and trainer.stopped_early
    assert load_checkpoint(tmp_path / BEST_NAME)["best"]["metric"] == "loss_like"
    # The setting is part of the run: resuming under another name is refused, naming it.
    with pytest.raises(ValueError, match="best_metric"):
        _trainer(small_data, tmp_path, metrics=[Improving()], test=False, validation=0.25, patience=2, epochs=20,
                 best_metric="rmse").fit()
    assert config_from_dict({"train": {"validation": 0.2, "best_metric": "loss_like"}}).train.best_metric == "loss_like"


def test_early_stopping_after_patience_evaluations(small_data, tmp_path):
    trainer = _trainer(small_data, tmp_path, metrics=[Worsening()], test=False, validation=0.25, patience=2, epochs=20)
    trainer.fit()
    assert trainer.epoch == 3 and trainer.stopped_early and trainer.best["epoch"] == 1
    assert [r["epoch"] for r in trainer.history.records] == [1, 2, 3]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 3 and state["since_best"] == 2 and state["history"]["finished"]
    # Resuming a run that stopped early does nothing more.
    again = _trainer(small_data, tmp_path, metrics=[Worsening()], test=False, validation=0.25, patience=2, epochs=20)
    again.fit()
    assert again.epoch == 3 and again.steps == trainer.steps
    assert [int(r["epoch"]) for r in _rows(tmp_path / METRICS_NAME)] == [1, 2, 3]


def test_an_interrupted_run_with_validation_resumes_to_the_same_result(small_data, tmp_path):
    """Stopped after best.pt and metrics.csv got ahead of the last checkpoint (checkpoint_every=2)."""
    # improves each epoch; eval_overhead=None: the same test evaluations (the default skips some by the clock)
    settings = dict(validation=0.25, patience=3, epochs=7, learning_rate=1e-2, checkpoint_every=2, eval_overhead=None)
    straight = _trainer(small_data, tmp_path / "straight", **settings)
    straight.fit()

    stopped = _trainer(small_data, tmp_path / "stopped", **settings)
    original = stopped._train_epoch

    def epoch_then_stop(bar):
        if stopped.epoch == 5:
            raise KeyboardInterrupt
        original(bar)

    stopped._train_epoch = epoch_then_stop
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert load_checkpoint(tmp_path / "stopped" / CHECKPOINT_NAME)["best"]["epoch"] == 4
    assert load_checkpoint(tmp_path / "stopped" / BEST_NAME)["epoch"] == 5  # ahead of the checkpoint
    assert [int(r["epoch"]) for r in _rows(tmp_path / "stopped" / METRICS_NAME)] == [1, 2, 3, 4, 5]

    resumed = _trainer(small_data, tmp_path / "stopped", **settings)
    resumed.fit()
    assert resumed.epoch == straight.epoch
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed.history.records) == strip(straight.history.records)
    assert resumed.best["epoch"] == straight.best["epoch"] and resumed.since_best == straight.since_best
    a = torch.load(tmp_path / "stopped" / BEST_NAME, weights_only=True)
    b = torch.load(tmp_path / "straight" / BEST_NAME, weights_only=True)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], v) for k, v in b["model"].items())
    rows, straight_rows = _rows(tmp_path / "stopped" / METRICS_NAME), _rows(tmp_path / "straight" / METRICS_NAME)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in straight_rows] == [str(e) for e in range(1, 8)]
    assert [r["validation.rmse"] for r in rows] == [r["validation.rmse"] for r in straight_rows]


def test_no_validation_trains_as_before_and_old_checkpoints_resume(small_data, tmp_path):
    plain = _trainer(small_data, tmp_path / "a")
    plain.fit()
    explicit = _trainer(small_data, validation=0.0)
    explicit.fit()
    for a, b in zip(plain.model.state_dict().values(), explicit.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not (tmp_path / "a" / BEST_NAME).exists() and plain.best is None
    assert all("validation" not in r for r in plain.history.records)
    # A checkpoint written before validation existed (no best, no such settings) still resumes.
    state = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    for key in ("best", "since_best"):
        del state[key]
    for key in ("validation", "patience", "best_metric"):
        del state["train_config"][key]
    state["epoch"], state["history"]["finished"] = 2, False
    state["history"]["records"] = state["history"]["records"][:2]
    old = _trainer(small_data)
    old.load_state_dict(state)
    assert old.epoch == 2 and old.best is None and old.since_best == 0



def test_checkpoints_written_before_objective_moved_still_resume(small_data, tmp_path):
    """Objective moved from objectives.core to objectives.objective; checkpoints record its class
    by module, and those written before the move resume (another kind is still refused)."""
    from manifoldtrain.objectives.objective import FORMER_NAME

    trainer = _trainer(small_data, tmp_path, epochs=2)
    trainer.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["objective"]["kind"] == "manifoldtrain.objectives.objective:Objective"
    state["objective"]["kind"] = FORMER_NAME
    resumed = _trainer(small_data, epochs=2)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2
    state["objective"]["kind"] = "somewhere.else:Objective"
    with pytest.raises(ValueError, match=r"objective.kind: 'somewhere.else:Objective' in the checkpoint"):
        _trainer(small_data, epochs=2).load_state_dict(state)


def test_checkpoints_written_before_the_grid_setting_still_resume(small_data, tmp_path):
    """DerivativeTerm.grid came later: a checkpoint without it trained with grid=False, and
    resumes; one that records grid=True does not resume a run without it."""
    trainer = _trainer(small_data, tmp_path, epochs=2)
    trainer.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    derivative = [t for t in state["objective"]["terms"] if t["kind"].endswith(":DerivativeTerm")]
    assert derivative and all(t["grid"] is False for t in derivative)
    for t in derivative:
        del t["grid"]
    resumed = _trainer(small_data, epochs=2)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2
    derivative[0]["grid"] = True
    with pytest.raises(ValueError, match=r"objective.terms\[\d\].grid: True in the checkpoint, False now"):
        _trainer(small_data, epochs=2).load_state_dict(state)


# ----------------------------------------------------------------- metrics.csv, runs


def test_metrics_csv_has_a_row_per_evaluation(small_data, tmp_path):
    trainer = _trainer(small_data, tmp_path, validation=0.2, epochs=5, eval_every=2)
    trainer.fit()
    rows = _rows(tmp_path / METRICS_NAME)
    assert [int(r["epoch"]) for r in rows] == [2, 4, 5]
    assert list(rows[0]) == ["epoch", "step", "seconds", "lr", "loss", "loss.value", "loss.d1 (full)", "test.rmse",
                             "test.rmse_d1", "test.rmse_d2", "validation.rmse", "validation.rmse_d1", "validation.rmse_d2"]
    last = trainer.history.records[-1]
    assert float(rows[-1]["test.rmse"]) == last["test"]["rmse"]  # exactly: floats are written with repr
    assert float(rows[-1]["loss.value"]) == last["losses"]["value"] and int(rows[-1]["step"]) == trainer.steps
    # A number that does not apply is an empty cell; records never evaluated are no rows.
    records = [{"epoch": 1, "step": 2, "seconds": 0.5, "lr": 1e-3, "loss": 0.25, "losses": {"value": 0.25}},
               {"epoch": 2, "step": 4, "seconds": 1.0, "lr": 1e-3, "loss": 0.125, "losses": {"value": 0.125},
                "test": {"rmse": 0.5, "rmse_d1": None}}]
    write_metrics_csv(records, tmp_path / "m.csv", terms=["value"])
    assert (tmp_path / "m.csv").read_text() == ("epoch,step,seconds,lr,loss,loss.value,test.rmse,test.rmse_d1\n"
                                                "2,4,1.0,0.001,0.125,0.125,0.5,\n")


def test_a_run_reports_the_best_model_and_clears_stale_files(tmp_path):
    table = tomllib.loads(TOML)
    table["train"].update(validation=0.25, patience=3)
    config = config_from_dict(table)
    out = tmp_path / "run"
    results = run_experiment(config, out, progress=False)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["checkpoint"] == BEST_NAME and on_disk["n_validation"] == 10
    history = on_disk["history"]
    values = [r["validation"]["rmse"] for r in history]
    assert on_disk["best_epoch"] == history[values.index(min(values))]["epoch"]
    assert on_disk["validation"] == history[on_disk["best_epoch"] - 1]["validation"]
    from manifoldtrain.experiment import make_data

    _, test = make_data(config, progress=False)
    best_model = model_from_checkpoint(load_checkpoint(out / BEST_NAME))
    assert results["test"] == evaluate(best_model, test, output_names=config.manifold.target_names).to_dict()
    assert list(on_disk["test"]["per_output"]) == [f"corner{k}_{a}" for k in (1, 2, 3) for a in "xyz"]  # the cube's
    assert len(_rows(out / METRICS_NAME)) == len(history)
    # Without validation: the last model, and no best.pt or rows left from the run before.
    (out / METRICS_NAME).write_text("epoch\n99\n")
    # eval_overhead = 1000: the test set at every epoch (the default skips some by the clock, under load).
    plain_table = tomllib.loads(TOML)
    plain_table["train"].update(eval_overhead=1000.0)
    plain = run_experiment(config_from_dict(plain_table), out, resume=False, progress=False)
    assert plain["checkpoint"] == CHECKPOINT_NAME and plain["best_epoch"] is None and plain["validation"] is None
    assert not (out / BEST_NAME).exists()
    assert [int(r["epoch"]) for r in _rows(out / METRICS_NAME)] == [1, 2, 3, 4]


def test_evaluate_uses_the_best_model_of_a_run(tmp_path, capsys):
    toml = TOML.replace("progress = false", "progress = false\nvalidation = 0.25")
    (tmp_path / "c.toml").write_text(toml.replace("learning_rate = 0.01", "learning_rate = 0.1").replace("epochs = 4", "epochs = 6"))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == BEST_NAME and 1 <= summary["best_epoch"] < 6  # not the last model
    small = ["--image-size", "9", "--extent", "0.5", "--sigma", "0.08", "--no-progress"]
    assert main(["generate", "cube", "--n", "10", "--seed", "11", "--out", str(tmp_path / "jets"), *small]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "jets")]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(run / BEST_NAME), "--data", str(tmp_path / "jets")]) == 0
    assert json.loads(capsys.readouterr().out) == from_run
    assert main(["evaluate", "--run", str(run / CHECKPOINT_NAME), "--data", str(tmp_path / "jets")]) == 0
    assert json.loads(capsys.readouterr().out) != from_run


# ----------------------------------------------------------------- CLI flags


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"manifoldtrain {__version__}"


@pytest.mark.parametrize("command", [
    ["train", "--config", "c.toml", "--out", "run"],
    ["demo", "--quick", "--out", "demo"],
    ["evaluate", "--run", "run", "--data", "jets"],
    ["generate", "cube", "--n", "4", "--out", "jets"],
])
def test_device_and_threads_are_checked_before_any_work(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(TOML)
    cases = [("--device", "gpu", "--device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
             ("--threads", "0", "--threads: expected an int >= 1, got 0")]
    if not torch.cuda.is_available():
        cases.append(("--device", "cuda:1", "--device: 'cuda:1' asked for, but CUDA is not available here"))
    else:
        cases.append(("--device", f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"))
    for option, value, message in cases:
        with pytest.raises(SystemExit) as info:
            main([*command, option, value])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_threads_seed_and_device_on_train(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--seed", "7",
                     "--threads", "1", "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    config = load_config(tmp_path / "run" / "config.toml")
    assert (config.model_seed, config.train.seed, config.data.seed, config.data.split_seed) == (7, 7, 7, 0)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["device"] == "cpu" and results["machine"]["threads"] == 1
    # A cache's points are its own: --seed leaves data.seed alone there.
    small = ["--image-size", "9", "--extent", "0.5", "--sigma", "0.08", "--no-progress"]
    assert main(["generate", "cube", "--n", "60", "--out", str(tmp_path / "jets"), "--device", "cpu", *small]) == 0
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run2"), "--seed", "7",
                 "--data", str(tmp_path / "jets")]) == 0
    config = load_config(tmp_path / "run2" / "config.toml")
    assert (config.model_seed, config.train.seed, config.data.seed) == (7, 7, 2)
    # Resuming with another seed is refused, naming the setting.
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--seed", "8"])
    assert "seed: 7 in the checkpoint, 8 now" in capsys.readouterr().err


def test_using_device_sets_the_default_of_run_experiment(tmp_path, monkeypatch):
    seen = []
    original = Trainer.__init__

    def spy(self, model, *args, **kw):
        seen.append(next(model.parameters()).device)
        original(self, model, *args, **kw)

    monkeypatch.setattr(Trainer, "__init__", spy)
    config = config_from_dict(tomllib.loads(TOML.replace("epochs = 4", "epochs = 1")))
    with using_device("cpu"):
        assert run_experiment(config, tmp_path / "a", progress=False)["device"] == "cpu"
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        with using_device("tpu"):
            pass
    assert seen == [torch.device("cpu")]


@requires_cuda
def test_training_on_cuda(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML.replace("progress = false", "progress = false\nvalidation = 0.25"))
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 0
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    gpu = json.loads((tmp_path / "gpu" / "results.json").read_text())
    cpu = json.loads((tmp_path / "cpu" / "results.json").read_text())
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    assert gpu["test"]["rmse"] == pytest.approx(cpu["test"]["rmse"], rel=0.05)
    state = load_checkpoint(tmp_path / "gpu" / CHECKPOINT_NAME)  # loads on the CPU
    assert all(v.device.type == "cpu" for v in state["model"].values())
    small = ["--image-size", "9", "--extent", "0.5", "--sigma", "0.08", "--no-progress"]
    assert main(["generate", "cube", "--n", "10", "--seed", "11", "--out", str(tmp_path / "jets"), "--device", "cuda",
                 *small]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "gpu"), "--data", str(tmp_path / "jets"), "--device", "cuda"]) == 0
    on_gpu = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(tmp_path / "gpu"), "--data", str(tmp_path / "jets")]) == 0
    assert json.loads(capsys.readouterr().out)["rmse"] == pytest.approx(on_gpu["rmse"], rel=1e-4)
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--seconds-per-run", "1", "--objectives", "value",
                 "--device", "cuda", "--no-progress"]) == 0
    assert json.loads((tmp_path / "demo" / "run_value" / "results.json").read_text())["device"].startswith("cuda")


def test_the_configs_device(tmp_path, capsys):
    text = 'device = "cuda"\n' + TOML.replace("epochs = 4", "epochs = 1")
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    assert config.device == "cuda"
    save_config(config, tmp_path / "again.toml")  # written back as a top-level key
    assert load_config(tmp_path / "again.toml") == config
    assert "device" not in config_to_dict(attrs.evolve(config, device=None))
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N' .*got 'gpu'"):
        config_from_dict(tomllib.loads(text.replace('"cuda"', '"gpu"')))
    # --device wins over the config's device: this trains on the CPU wherever it runs.
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "cpu" / "results.json").read_text())["device"] == "cpu"
    if torch.cuda.is_available():
        assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "gpu")]) == 0
        assert json.loads((tmp_path / "gpu" / "results.json").read_text())["device"].startswith("cuda")
    else:  # the config's device is checked where the run starts, naming where it came from
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "gpu")])
        assert f"device (in --config {tmp_path / 'c.toml'}): 'cuda' asked for, but CUDA is not available" in \
            capsys.readouterr().err
        with pytest.raises(ValueError, match="config.device: 'cuda' asked for, but CUDA is not available"):
            run_experiment(config, tmp_path / "api", progress=False)
        assert not (tmp_path / "gpu").exists() and not (tmp_path / "api").exists()


@requires_cuda
def test_on_the_fly_jets_are_computed_on_the_training_device(tmp_path, monkeypatch):
    from manifoldtrain.sources import OnTheFlySource

    seen = []
    original = OnTheFlySource.__init__

    def spy(self, *args, **kw):
        original(self, *args, **kw)
        seen.append(self.device)

    monkeypatch.setattr(OnTheFlySource, "__init__", spy)
    table = tomllib.loads('device = "cuda"\n' + TOML.replace("epochs = 4", "epochs = 1"))
    table["data"].update(source="on-the-fly", calibration=8)
    results = run_experiment(config_from_dict(table), tmp_path / "run", progress=False)
    assert results["device"].startswith("cuda") and seen and seen[0].type == "cuda"
