"""TOML configs, the experiment runner, and the generate / train / evaluate / demo commands."""

import json

import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.config import ExperimentConfig, config_from_dict, load_config, save_config
from manifoldtrain.data import load_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import ConvNetConfig, MLPConfig
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import TrainConfig

TOML = """
model_seed = 3

[manifold]
kind = "cube"
image_size = 9
extent = 0.5
sigma = 0.08

[data]
n_train = 40
n_test = 16
seed = 2

[model]
kind = "mlp"
hidden = [12, 12]
activation = "gelu"

[[objective.terms]]
kind = "value"

[[objective.terms]]
kind = "derivative"
order = 2
weight = 0.5
directions = 2

[train]
epochs = 3
batch_size = 8
progress = false
"""


def test_toml_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert config.manifold == Cube(image_size=9, extent=0.5, sigma=0.08)
    assert config.model == MLPConfig(hidden=(12, 12), activation="gelu")
    assert config.objective == Objective((ValueTerm(), DerivativeTerm(2, weight=0.5, directions=2)))
    assert config.train.epochs == 3 and config.model_seed == 3
    save_config(config, tmp_path / "again.toml")
    assert load_config(tmp_path / "again.toml") == config
    full = ExperimentConfig(model=ConvNetConfig(), train=TrainConfig(time_budget=3.0, grad_clip=1.0))
    save_config(full, tmp_path / "full.toml")
    assert load_config(tmp_path / "full.toml") == full
    assert load_config(tmp_path / "missing.toml".replace("missing", "c")) == config


@pytest.mark.parametrize(
    "table, error, message",
    [
        ({"modle": {}}, ValueError, "unknown table.*modle"),
        ({"model": {"kind": "resnet"}}, ValueError, r"model.kind: unknown model 'resnet'; expected one of \['convnet', 'mlp'\]"),
        ({"objective": {"terms": [{"kind": "nosuch_module:MyTerm"}]}}, ValueError, r"objective.terms\[0\].kind: cannot import module 'nosuch_module'"),
        ({"objective": {"terms": [{"kind": "manifoldtrain.nn:MLPConfig"}]}}, TypeError, r"objective.terms\[0\].kind: .* is not a subclass of Term"),
        ({"objective": {"terms": [{"kind": "manifoldtrain.nn:NoSuch"}]}}, ValueError, "has no 'NoSuch'"),
        ({"model": {"kind": "mlp", "width": 3}}, ValueError, r"model: unknown key\(s\) \['width'\]"),
        ({"model": {"kind": "mlp", "activation": "relu"}}, ValueError, "model.activation"),
        ({"train": {"epochs": 0}}, ValueError, "train.epochs"),
        ({"objective": {"terms": []}}, ValueError, "objective"),
        ({"objective": {"terms": [{"kind": "derivative", "order": 3}]}}, ValueError, r"objective.terms\[0\].order"),
        ({"manifold": {"kind": "cube", "sigma": -1.0}}, ValueError, "manifold.sigma"),
        ({"data": {"dtype": "float16"}}, ValueError, "data.dtype"),
    ],
)
def test_bad_configs_name_the_key(table, error, message):
    with pytest.raises(error, match=message):
        config_from_dict(table)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[model\nkind=")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_generate_train_evaluate_commands(tmp_path, capsys):
    cache = tmp_path / "jets"
    assert main(["generate", "cube", "--n", "20", "--seed", "9", "--out", str(cache), "--image-size", "9", "--extent", "0.5",
                 "--sigma", "0.08", "--no-progress"]) == 0
    data = load_jets(cache)
    assert len(data) == 20 and data.inputs.d2.shape == (20, 21, 9, 9)
    (tmp_path / "c.toml").write_text(TOML)
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3 and results["test"]["n"] == 16 and results["test"]["jet"] == "network_jet"
    assert all("rmse_d2" in r["test"] for r in results["history"] if "test" in r)
    assert (run / "config.toml").exists() and (run / "checkpoint.pt").exists() and (run / "curves.png").exists()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(cache), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 20 and metrics["rmse_d2"] > 0
    # Training again into the same directory resumes (nothing left to do) and agrees.
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["test"] == results["test"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--run", "nowhere", "--data", "nowhere"], "--data nowhere: path: no complete jet cache"),
        (["train", "--config", "missing.toml", "--out", "r"], "no config file"),
        (["generate", "cube", "--n", "0", "--out", "x"], "n: expected an int >= 1"),
        (["demo", "--objectives", "value", "third"], "objectives"),
        (["demo", "--seconds-per-run", "-1"], "seconds_per_run"),
    ],
)
def test_command_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_evaluate_refuses_a_cache_of_another_shape(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    main(["generate", "cube", "--n", "4", "--out", str(tmp_path / "big"), "--image-size", "11", "--no-progress"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "big")])
    assert "test: its inputs have shape [11, 11], the model was trained on [9, 9]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path / "nowhere"), "--data", str(tmp_path / "big")])
    assert "--run" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["objective"] for r in results["runs"]] == ["value", "first", "second"]
    for r in results["runs"]:
        assert set(r) == {"objective", "test_rmse", "test_rmse_d1", "test_rmse_d2", "seconds", "epochs", "seed"}
        assert r["epochs"] >= 1 and r["test_rmse"] > 0
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "objective" in text and "value / second order" in text
