"""``manifoldtrain export``: a trained network as a torch.export program that runs without the library."""

import json
import os
import subprocess
import sys
import tomllib

import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.config import config_from_dict
from manifoldtrain.experiment import model_from_checkpoint, run_experiment
from manifoldtrain.export import export_info, export_run, is_export
from manifoldtrain.training import BEST_NAME, CHECKPOINT_NAME, load_checkpoint

from config_helpers import cube_toml
from conftest import ROOT

TOML = cube_toml(n_train=24, n_test=8, hidden=[12], train={"epochs": 2, "batch_size": 8})

# Runs torch.export.load where manifoldtrain cannot be imported: isolated mode (no PYTHONPATH,
# no current folder), the repository's root off sys.path, and the package blocked in
# sys.modules (the editable install's finder in site-packages would otherwise find it).
LOADER = """
import os, sys
root = os.path.realpath(sys.argv[1])
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != root]
sys.modules["manifoldtrain"] = None
import torch
program = torch.export.load(sys.argv[2])
x = torch.load(sys.argv[3], weights_only=True)
torch.save(program.module()(x).detach(), sys.argv[4])
assert sys.modules["manifoldtrain"] is None
assert not any(os.path.realpath(p) in (root, os.path.join(root, "manifoldtrain")) for p in sys.path if p)
print("ok", [m for m in sys.modules if m.startswith("manifoldtrain.")])
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    run_experiment(config_from_dict(tomllib.loads(TOML)), out, progress=False)
    return out


def test_export_runs_without_the_library(run, tmp_path, capsys):
    model = model_from_checkpoint(load_checkpoint(run / CHECKPOINT_NAME)).eval()
    # Inputs far from the training data's scale: the normalisation must be inside the program.
    x = 3.0 * torch.rand(5, 9, 9, generator=torch.Generator().manual_seed(0)) + 1.0
    torch.save(x, tmp_path / "x.pt")
    out = tmp_path / "model.pt2"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert "from checkpoint.pt (epoch 2)" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, str(ROOT), str(out), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(torch.load(tmp_path / "y.pt", weights_only=True), expected, rtol=1e-5, atol=1e-6)
    info = export_info(out)
    assert info["input_shape"] == [9, 9] and info["target_shape"] == [9] and info["checkpoint"] == CHECKPOINT_NAME
    # Any batch size, including one.
    program = torch.export.load(out).module()
    assert torch.allclose(program(x[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def test_export_never_replaces_what_is_not_an_export(run, tmp_path, capsys):
    notes = tmp_path / "notes.pt2"
    notes.write_text("mine")
    with pytest.raises(SystemExit):
        main(["export", "--run", str(run), "--out", str(notes)])
    assert "--out: " in (err := capsys.readouterr().err) and "is not a manifoldtrain export" in err
    assert notes.read_text() == "mine"
    with pytest.raises(SystemExit):
        main(["export", "--run", str(run), "--out", str(tmp_path)])
    assert "--out: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt2")])
    assert "--run" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="out: .* --force"):
        export_run(run, notes)
    # An earlier export is replaced; another file only with --force; never any debris.
    out = tmp_path / "model.pt2"
    export_run(run, out)
    assert is_export(out) and not is_export(notes) and not is_export(tmp_path / "missing.pt2")
    assert main(["export", "--run", str(run / CHECKPOINT_NAME), "--out", str(out)]) == 0
    assert main(["export", "--run", str(run), "--out", str(notes), "--force"]) == 0
    assert is_export(notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "notes.pt2"]


def test_export_of_a_run_with_validation_takes_the_best_model(tmp_path):
    table = tomllib.loads(TOML)
    table["train"].update(validation=0.25, epochs=3)
    run_experiment(config_from_dict(table), tmp_path / "run", progress=False)
    out = export_run(tmp_path / "run", tmp_path / "best.pt2")
    best = load_checkpoint(tmp_path / "run" / BEST_NAME)
    assert export_info(out)["checkpoint"] == BEST_NAME and export_info(out)["epoch"] == best["epoch"]
    x = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(torch.export.load(out).module()(x), model_from_checkpoint(best).eval()(x), rtol=1e-5,
                              atol=1e-6)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["checkpoint"] == BEST_NAME
