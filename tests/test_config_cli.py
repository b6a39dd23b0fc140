"""TOML configs, the experiment runner, and the generate / train / evaluate / demo commands."""

import json
import re
import tomllib

import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.config import ExperimentConfig, config_from_dict, load_config, save_config
from manifoldtrain.data import load_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import ConvNetConfig, MLPConfig
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import TrainConfig

from config_helpers import cube_toml

TOML = cube_toml(
    top={"model_seed": 3},
    n_train=40, n_test=16, data={"seed": 2},
    hidden=[12, 12], model={"activation": "gelu"},
    terms=({"kind": "value"}, {"kind": "derivative", "order": 2, "weight": 0.5, "directions": 2}),
    train={"epochs": 3, "batch_size": 8},
)


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


def test_cube_toml_writes_configs_the_loader_reads(tmp_path):
    """The tests' config builder (tests/config_helpers.py): valid TOML, in table order, that
    load_config reads as the settings it was given."""
    text = cube_toml(
        top={"model_seed": 5},
        n_train=10, n_test=4, data={"seed": 1, "dtype": "float64"},
        hidden=(6, 5), model={"activation": "gelu"},
        terms=({"kind": "value"}, {"kind": "derivative", "order": 1, "weight": 0.5}),
        train={"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "progress": True},
    )
    table = tomllib.loads(text)
    assert list(table) == ["model_seed", "manifold", "data", "model", "objective", "train"]
    assert list(table["train"]) == ["epochs", "batch_size", "learning_rate", "progress"]
    path = tmp_path / "c.toml"
    path.write_text(text)
    config = load_config(path)
    assert config == config_from_dict(table)
    assert config.model_seed == 5 and config.manifold == Cube(image_size=9, extent=0.5, sigma=0.08)
    assert (config.data.n_train, config.data.n_test, config.data.seed, config.data.dtype) == (10, 4, 1, "float64")
    assert config.model == MLPConfig(hidden=(6, 5), activation="gelu")
    assert config.objective == Objective((ValueTerm(), DerivativeTerm(1, weight=0.5)))
    assert (config.train.epochs, config.train.batch_size, config.train.learning_rate) == (2, 4, 0.01)
    assert config.train.progress is True
    # the defaults: one value term, two epochs in batches of 8, no progress bars
    default = tomllib.loads(cube_toml(n_train=8, n_test=4, hidden=[4]))
    assert default["objective"] == {"terms": [{"kind": "value"}]}
    assert default["train"] == {"epochs": 2, "batch_size": 8, "progress": False}
    assert config_from_dict(default).model == MLPConfig(hidden=(4,))


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
        (["evaluate", "--run", "nowhere", "--data", "nowhere"], "--data: no jet cache at nowhere: there is no such"),
        (["train", "--config", "missing.toml", "--out", "r"], "no config file"),
        (["generate", "cube", "--n", "0", "--out", "x"], "n: expected an int >= 1"),
        (["demo", "--objectives", "value", "third"], "objectives"),
        (["demo", "--seconds-per-run", "-1"], "--seconds-per-run: expected a number > 0"),
    ],
)
def test_command_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failed_command_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """A run that fails before writing anything (here: a cache of other manifold settings, found
    after the folder was claimed) takes back its folder: one it created goes, an empty one of the user's
    stays empty; a folder that held a run is left as it is."""
    import manifoldtrain.experiment as experiment

    (tmp_path / "c.toml").write_text(TOML)
    main(["generate", "cube", "--n", "8", "--out", str(tmp_path / "jets"), "--order", "0", "--image-size", "9",
          "--no-progress"])
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new" / "run", empty):
        with pytest.raises(SystemExit):
            main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(out), "--data", str(tmp_path / "jets")])
        assert "was generated from another manifold or settings" in capsys.readouterr().err
    assert not (tmp_path / "new" / "run").exists() and (tmp_path / "new").is_dir()
    assert empty.is_dir() and list(empty.iterdir()) == []
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run)]) == 0
    before = sorted(p.name for p in run.iterdir())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "_make_data", interrupted)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run), "--no-resume"]) == 130
    assert sorted(p.name for p in run.iterdir()) == before


def test_ctrl_c_is_one_line_that_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) ends a command with status 130 and one line, no traceback,
    saying that the same command continues; nothing is left of a run that had not started."""
    import manifoldtrain.experiment as experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "_make_data", interrupted)
    (tmp_path / "c.toml").write_text(TOML)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err == ("manifoldtrain train: interrupted; the same command continues the run from its last checkpoint "
                   "(--no-resume starts over)\n")
    assert not (tmp_path / "run").exists()


def test_under_torchrun_rank_0_alone_reports_an_error(tmp_path, monkeypatch, capsys):
    """Every process of a torchrun session fails alike on a bad argument; only rank 0 prints it."""
    argv = ["train", "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "r")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "no config file" in capsys.readouterr().err


def test_evaluate_refuses_a_cache_of_another_shape(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    main(["generate", "cube", "--n", "4", "--out", str(tmp_path / "big"), "--image-size", "11", "--no-progress"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "big")])
    assert "other manifold or settings than the run's (manifold.settings.image_size: 11 in the test data, 9 in the run)" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path / "nowhere"), "--data", str(tmp_path / "big")])
    assert "--run" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["objective"] for r in results["runs"]] == ["value", "first", "second"]
    for r in results["runs"]:
        assert set(r) == {"objective", "test_rmse", "test_rmse_d1", "test_rmse_d2", "test_per_output", "seconds",
                          "epochs", "seed"}
        assert r["epochs"] >= 1 and r["test_rmse"] > 0
        assert list(r["test_per_output"]) == [f"corner{k}_{a}" for k in (1, 2, 3) for a in "xyz"]
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "objective" in text and "value / second order" in text
    assert "per output: clean test RMSE / std of its test targets" in text and "\ncorner3_z " in text


def test_demo_says_when_the_machine_is_busy(tmp_path, capsys, monkeypatch):
    import manifoldtrain.demo as demo

    note = demo._busy_machine_note
    assert note(None, 2, 2) is None and note(0.2, 2, 2) is None and note(0.4, 4, 2) is None
    assert "load 1.0 on 2 cores" in note(1.0, 2, 2) and note(3.0, 4, 2)
    monkeypatch.setattr(demo, "_load_average", lambda: 3.0)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # conftest's choice: the demo would keep it
    # Two threads to start from, whatever an earlier test left (tests/train_run.py sets one), so
    # that keeping torch to the idle cores shows; conftest's count is given back at the end.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = torch.get_num_threads()
        out = tmp_path / "demo"
        assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
        text = capsys.readouterr().out
        assert "note: this machine is busy (load 3.0 on 2 cores" in text and "(on a busy machine: see the note above)" in text
        assert "(5-7x for the cube on 2 idle cores" in text  # the default cube: its figures may be quoted
        results = json.loads((out / "results.json").read_text())
        assert results["busy_machine"].startswith("note: this machine is busy")
        assert results["machine"]["load_average_before"] == 3.0 and results["machine"]["cpus"] == 2
        # Torch kept to the idle cores (here none: one thread) while the demo ran, and given back after.
        assert "uses 1 torch thread instead of" in text and results["machine"]["torch_threads"] == 1
        assert torch.get_num_threads() == threads
        fit = demo._threads_for
        assert fit(None, 2, 2) == 2 and fit(0.2, 2, 2) == 2 and fit(1.0, 2, 2) == 1 and fit(2.0, 16, 16) == 14
        assert fit(9.0, 8, 4) == 1
        # --threads given: used as given, busy or not.
        # (One objective from here on: the threads do not depend on it, and each one trains for seconds.)
        status = main(["demo", "--quick", "--out", str(tmp_path / "d2"), "--no-progress", "--threads", "2",
                       "--objectives", "value"])
        torch.set_num_threads(threads)  # --threads set it for the process
        assert status == 0
        text = capsys.readouterr().out
        assert "instead of" not in text
        assert json.loads((tmp_path / "d2" / "results.json").read_text())["machine"]["torch_threads"] == 2
        # OMP_NUM_THREADS chooses too: the note, but the threads are kept.
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert main(["demo", "--quick", "--out", str(tmp_path / "d3"), "--no-progress", "--objectives", "value"]) == 0
        text = capsys.readouterr().out
        assert "note: this machine is busy" in text and "instead of" not in text
        assert json.loads((tmp_path / "d3" / "results.json").read_text())["machine"]["torch_threads"] == 2
    finally:
        torch.set_num_threads(previous)


def test_computing_commands_keep_torch_to_the_idle_cores(tmp_path, capsys, monkeypatch):
    import manifoldtrain._threads as threads_module
    import manifoldtrain.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_train", lambda args: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.setattr(threads_module, "load_average", lambda seconds: 1.0)  # one of the two cores busy
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    command = ["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(command) == 0
        assert seen == [1] and torch.get_num_threads() == 2  # one thread while it ran, given back after
        assert "manifoldtrain train: note: other work keeps about 1.0 of the 2 cores busy; torch uses 1 thread " \
               "instead of 2" in capsys.readouterr().err
        # --threads chooses (here the handler, replaced, does not set it), and so do OMP_NUM_THREADS and torchrun.
        assert main(command + ["--threads", "2"]) == 0
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert main(command) == 0
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(command) == 0
        assert seen == [1, 2, 2, 2] and "note:" not in capsys.readouterr().err
        monkeypatch.delenv("WORLD_SIZE")
        monkeypatch.setattr(threads_module, "load_average", lambda seconds: 0.1)  # idle: nothing changes
        assert main(command) == 0
        assert seen[-1] == 2 and "note:" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------- nothing lost

GEN = ["generate", "cube", "--n", "4", "--image-size", "9", "--extent", "0.5", "--sigma", "0.08", "--no-progress"]


def test_generate_never_replaces_what_is_not_a_jet_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of it")
    for out, message in (("notes.txt", "is a file, not a jet cache"), ("work", "is a folder of other files"),
                         (".", "folder of other files|current folder")):
        with pytest.raises(SystemExit):
            main([*GEN, "--out", out])
        assert re.search(message, capsys.readouterr().err)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (work / "thesis.tex").read_text() == "years of it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "work"]  # no debris
    # A cache is replaced by a cache, atomically, leaving nothing beside it.
    assert main([*GEN, "--out", "cache"]) == 0
    assert main([*GEN, "--out", "cache", "--seed", "3"]) == 0
    assert load_jets(tmp_path / "cache").meta["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.txt", "work"]


def test_umask_is_respected(tmp_path, monkeypatch):
    import os
    import stat

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        assert main([*GEN, "--out", "cache"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "cache" / "meta.json").stat().st_mode) == 0o640


def test_train_and_demo_write_only_into_their_own_folders(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"my": "results"}')
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(mine)])
    assert "not a manifoldtrain output (results.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--out", str(mine)])
    assert "--force" in capsys.readouterr().err
    assert (mine / "results.json").read_text() == '{"my": "results"}' and sorted(p.name for p in mine.iterdir()) == ["results.json"]
    # The run's own config.toml given as --config: never replaced, even with --force.
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run)]) == 0
    (run / "config.toml").write_text("# my notes\n" + (run / "config.toml").read_text())
    with pytest.raises(SystemExit):
        main(["train", "--config", str(run / "config.toml"), "--out", str(run), "--force"])
    assert "--config" in capsys.readouterr().err and (run / "config.toml").read_text().startswith("# my notes")
    # A demo folder is not a run folder; a file is not a folder.
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "c.toml")])
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(run), "--data", str(run), "--json", str(run)])
    assert "--json" in capsys.readouterr().err
    # Forced into a folder of other files, a run replaces the files it writes and deletes none.
    (mine / "robustness.json").write_text('{"my": "numbers"}')
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(mine), "--force"]) == 0
    assert (mine / "robustness.json").read_text() == '{"my": "numbers"}'
    assert json.loads((mine / "results.json").read_text())["steps"] > 0


def test_a_fresh_run_clears_stale_results(tmp_path, monkeypatch):
    from manifoldtrain.experiment import run_experiment
    from manifoldtrain.training import Trainer

    config = config_from_dict(tomllib.loads(TOML))
    run_experiment(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "results.json").exists()

    def broken(self, **kw):
        raise FloatingPointError("loss: went bad")

    monkeypatch.setattr(Trainer, "fit", broken)
    with pytest.raises(FloatingPointError):
        run_experiment(config, tmp_path / "run", resume=False, progress=False)
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "curves.png").exists()


MY_MANIFOLD = '''
import attrs
import torch
from manifoldtrain import Manifold


@attrs.frozen
class Blob(Manifold):
    """A Gaussian blob imaged on a grid; the target is its position."""

    size: int = 9
    width: float = 0.25
    param_dim, point_shape, target_shape = 2, (2,), (2,)

    @property
    def input_shape(self):
        return (self.size, self.size)

    def sample(self, n, generator=None, *, dtype=None, device=None):
        return (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5).to(dtype or torch.float64)

    def input(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        c = points + theta
        grid = torch.linspace(-1, 1, self.size, dtype=points.dtype)
        gx, gy = grid.reshape(1, 1, -1) - c[:, :1, None], grid.reshape(1, -1, 1) - c[:, 1:, None]
        return torch.exp(-(gx * gx + gy * gy) / (2 * self.width**2))

    def target(self, points, theta):
        self.check_points(points)
        self.check_theta(points, theta)
        return points + theta
'''


def test_a_users_manifold_in_their_own_file_works_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_blob.py").write_text(MY_MANIFOLD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["show", "my_blob:Blob", "--out", "blob.png", "--size", "11", "--second-order"]) == 0
    assert (tmp_path / "blob.png").stat().st_size > 0
    assert main(["generate", "my_blob:Blob", "--n", "24", "--seed", "7", "--out", "jets", "--no-progress"]) == 0
    assert load_jets("jets").inputs.d2.shape == (24, 3, 9, 9)
    for objective in ("value", "second"):
        terms = '[[objective.terms]]\nkind = "value"\n' + (
            '[[objective.terms]]\nkind = "derivative"\norder = 1\n[[objective.terms]]\nkind = "derivative"\norder = 2\n'
            'weight = 0.03\n' if objective == "second" else "")
        (tmp_path / f"{objective}.toml").write_text(
            f'[manifold]\nkind = "my_blob:Blob"\n[data]\nn_train = 40\nn_test = 10\ntest_order = 2\n'
            f'[model]\nkind = "mlp"\nhidden = [8]\n{terms}[train]\nepochs = 2\nbatch_size = 8\nprogress = false\n')
        assert main(["train", "--config", f"{objective}.toml", "--out", objective]) == 0
        assert 'kind = "my_blob:Blob"' in (tmp_path / objective / "config.toml").read_text()
        capsys.readouterr()
        assert main(["evaluate", "--run", objective, "--data", "jets"]) == 0
        assert json.loads(capsys.readouterr().out)["rmse_d2"] > 0
    assert main(["demo", "--quick", "--manifold", "my_blob:Blob", "--out", "demo", "--seconds-per-run", "0.5"]) == 0
    assert len(json.loads((tmp_path / "demo" / "results.json").read_text())["runs"]) == 3
    assert main(["show", "no_such_module:Blob", "--out", "x.png"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


PLAIN_MANIFOLD = MY_MANIFOLD.replace("import attrs\n", "").replace("@attrs.frozen\n", "").replace(
    """    size: int = 9
    width: float = 0.25
    param_dim""", """    def __init__(self, size: int = 9, width: float = 0.25):
        self.size, self.width = size, width

    param_dim""")


def test_a_plain_class_with_keyword_settings_is_a_manifold_of_configs_and_commands(tmp_path, monkeypatch, capsys):
    """No attrs needed: its __init__'s keyword arguments are its settings, kept as attributes; the
    module is found in the current folder, as the docs say, without PYTHONPATH."""
    import sys

    assert "class Blob(Manifold):\n    \"\"\"" in PLAIN_MANIFOLD and "attrs" not in PLAIN_MANIFOLD
    (tmp_path / "plain_blob.py").write_text(PLAIN_MANIFOLD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    (tmp_path / "c.toml").write_text(
        '[manifold]\nkind = "plain_blob:Blob"\nwidth = 0.3\n[data]\nn_train = 24\nn_test = 8\n'
        '[model]\nkind = "mlp"\nhidden = [8]\n[[objective.terms]]\nkind = "value"\n[train]\nepochs = 1\n'
        'batch_size = 8\nprogress = false\n')
    assert main(["train", "--config", "c.toml", "--out", "run"]) == 0
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'kind = "plain_blob:Blob"' in saved and "width = 0.3" in saved and "size = 9" in saved
    assert load_config(tmp_path / "run" / "config.toml").manifold.width == 0.3
    assert main(["generate", "plain_blob:Blob", "--n", "4", "--size", "7", "--out", "jets", "--no-progress"]) == 0
    assert load_jets("jets").inputs.shape == (7, 7)
    # a wrong key or type is named, as for an attrs class
    (tmp_path / "bad.toml").write_text('[manifold]\nkind = "plain_blob:Blob"\nsize = "9"\n')
    with pytest.raises(TypeError, match=r"manifold.size: expected an integer, got the string '9'"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text('[manifold]\nkind = "plain_blob:Blob"\nsigma = 1\n')
    with pytest.raises(ValueError, match=r"manifold: unknown key\(s\) \['sigma'\]; expected some of \['size', 'width'\]"):
        load_config(tmp_path / "bad.toml")


def test_a_broken_plug_in_module_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.py").write_text("class Blob(:\n    pass\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no licence server')\n")
    assert main(["show", "typo:Blob", "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "importing module 'typo' for manifold 'typo:Blob' failed" in err and "typo.py, line 1" in err
    assert "Traceback" not in err
    assert main(["show", "raises:Blob", "--out", "x.png"]) == 2
    assert "failed: RuntimeError: no licence server" in capsys.readouterr().err
    assert main(["show", "no_such_module:Blob", "--out", "x.png"]) == 2
    assert "current folder and on PYTHONPATH" in capsys.readouterr().err
    # settings that cannot be named are refused, naming the class
    from manifoldtrain._settings import setting_values, settings_of

    class Loose:
        def __init__(self, *sizes):
            self.sizes = sizes

    class Forgetful:
        def __init__(self, size=3):
            pass

    with pytest.raises(TypeError, match=r"Loose: __init__ takes \*sizes"):
        settings_of(Loose)
    with pytest.raises(TypeError, match=r"Forgetful: its setting 'size'.*self.size = size"):
        setting_values(Forgetful())


MY_NET = '''
import attrs
from torch import nn
from manifoldtrain.nn import ModelConfig, Sine


@attrs.frozen
class SineNet(ModelConfig):
    width: int = 8

    def layers(self, input_shape, n_outputs):
        return [nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], self.width), Sine(),
                nn.Linear(self.width, n_outputs)]
'''


def test_a_users_model_in_their_own_file_works_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_net.py").write_text(MY_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(TOML.replace('kind = "mlp"\nhidden = [12, 12]\nactivation = "gelu"',
                                                  'kind = "my_net:SineNet"\nwidth = 6'))
    assert main(["train", "--config", "c.toml", "--out", "run"]) == 0
    assert 'kind = "my_net:SineNet"' in (tmp_path / "run" / "config.toml").read_text()
    assert main(["generate", "cube", "--n", "8", "--seed", "9", "--out", "jets", "--image-size", "9", "--extent", "0.5",
                 "--sigma", "0.08", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", "run", "--data", "jets"]) == 0  # the model rebuilt from the checkpoint
    assert json.loads(capsys.readouterr().out)["rmse_d2"] > 0
    # Not a model config: named where the config names it.
    (tmp_path / "bad.toml").write_text(TOML.replace('kind = "mlp"\nhidden = [12, 12]\nactivation = "gelu"',
                                                    'kind = "manifoldtrain.training:TrainConfig"'))
    with pytest.raises(SystemExit):
        main(["train", "--config", "bad.toml", "--out", "bad"])
    assert "model: expected a ModelConfig" in capsys.readouterr().err


def test_train_and_evaluate_on_generated_caches_checked_by_manifold_settings(tmp_path, capsys):
    small = ["--image-size", "9", "--extent", "0.5", "--no-progress"]
    assert main(["generate", "cube", "--n", "60", "--out", str(tmp_path / "train-jets"), "--sigma", "0.08", *small]) == 0
    assert main(["generate", "cube", "--n", "60", "--out", str(tmp_path / "other"), "--sigma", "0.09", *small]) == 0
    (tmp_path / "c.toml").write_text(TOML)
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run), "--data", str(tmp_path / "train-jets")]) == 0
    assert load_config(run / "config.toml").data.path == str(tmp_path / "train-jets")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r2"), "--data", str(tmp_path / "other")])
    assert "manifold.settings.sigma: 0.09 in the cache, 0.08 now" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "config.toml").exists()
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(run), "--data", str(tmp_path / "other")])
    assert "manifold.settings.sigma: 0.09 in the test data, 0.08 in the run" in capsys.readouterr().err
    # A cache drawn with the run's own data seed holds its training points: said out loud.
    run2 = tmp_path / "run2"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(run2)]) == 0
    assert main(["generate", "cube", "--n", "20", "--seed", "2", "--out", str(tmp_path / "same"), "--sigma", "0.08", *small]) == 0
    with pytest.warns(UserWarning, match="these are the run's training points"):
        main(["evaluate", "--run", str(run2), "--data", str(tmp_path / "same")])


def _parsers(parser):
    """A parser and every subcommand's parser under it."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_options_are_taken_only_as_written_in_full(capsys):
    """No argparse abbreviations: `robustness --width 64` set --widths without a word."""
    from pathlib import Path

    from manifoldtrain.cli import _build_parser

    parsers = list(_parsers(_build_parser()))
    assert len(parsers) > 8 and all(not p.allow_abbrev for p in parsers)
    with pytest.raises(SystemExit) as stop:
        main(["robustness", "--manifold", "cube", "--width", "64", "--out", "unused"])
    assert stop.value.code == 2 and "unrecognized arguments: --width 64" in capsys.readouterr().err
    # the scripts too: every parser of the benchmarks and examples is made with allow_abbrev=False
    root = Path(__file__).resolve().parents[1]
    for script in sorted([*root.glob("benchmarks/*.py"), *root.glob("examples/*.py")]):
        for line in script.read_text().splitlines():
            if "argparse.ArgumentParser(" in line:
                assert "allow_abbrev=False" in line, f"{script.name}: {line.strip()}"


def test_results_files_are_strict_json(tmp_path, monkeypatch, capsys):
    """A number that could not be computed is null, never Python's bare NaN or Infinity (which
    strict JSON readers refuse): in results.json and in what train and evaluate print."""
    import manifoldtrain.experiment as experiment
    from manifoldtrain.records import strict_json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text[:200]}"))

    assert strict(strict_json({"a": float("nan"), "b": [1.0, float("-inf")], "c": (2,)})) == {"a": None,
                                                                                          "b": [1.0, None], "c": [2]}
    monkeypatch.setattr(experiment, "machine_info", lambda *a, **k: {"load": float("nan"), "peak": float("inf")})
    (tmp_path / "c.toml").write_text(TOML.replace("epochs = 3", "epochs = 1"))
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 0
    strict(capsys.readouterr().out)
    assert strict((tmp_path / "run" / "results.json").read_text())["machine"] == {"load": None, "peak": None}
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: type("M", (), {"to_dict": lambda self: {
        "rmse": float("nan")}})())
    assert main(["generate", "cube", "--image-size", "9", "--extent", "0.5", "--sigma", "0.08", "--n", "4",
                 "--seed", "9", "--out", str(tmp_path / "jets"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "jets"),
                 "--json", str(tmp_path / "e.json")]) == 0
    assert strict(capsys.readouterr().out) == {"rmse": None} == strict((tmp_path / "e.json").read_text())


def test_demo_takes_the_settings_of_its_manifold(tmp_path, capsys):
    """``demo --manifold NAME --SETTING V``: the manifold's settings are options of the command
    (issue 25: ``demo`` took none), recorded in results.json and said in the first line."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--objectives", "value", "--manifold", "cube",
                 "--image-size", "9", "--sigma", "0.08", "--n-train", "16", "--n-test", "8",
                 "--seconds-per-run", "0.5"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["manifold"]["kind"] == "cube"
    assert results["config"]["manifold"]["image_size"] == 9 and results["config"]["manifold"]["sigma"] == 0.08
    assert "cube (image_size=9, sigma=0.08)" in capsys.readouterr().out
    # A bad setting is named by its option, before any work.
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--out", str(tmp_path / "bad"), "--sigma", "-1"])
    assert stop.value.code == 2 and "--sigma: expected a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["demo", "--out", str(tmp_path / "bad"), "--manifold", "no_such_module:Blob"]) == 2
    assert "manifoldtrain demo: error: --manifold: cannot import module 'no_such_module'" in capsys.readouterr().err


def test_robustness_offers_the_manifolds_settings_and_renames_clashes(capsys):
    """Phase retrieval has a setting ``widths``, as the comparison has: the manifold's is offered
    as ``--manifold-widths``, so neither hides the other."""
    with pytest.raises(SystemExit):
        main(["robustness", "--manifold", "phase-retrieval", "--help"])
    text = capsys.readouterr().out
    assert "--manifold-widths" in text and "--widths" in text and "--photons" in text
    from manifoldtrain.manifolds import Cube
    from manifoldtrain.robustness.suite import SuiteConfig

    config = SuiteConfig(manifold=Cube(sigma=0.05), widths=(8,))
    assert config.experiment("value", 8, None).manifold == Cube(sigma=0.05)
    assert json.loads(json.dumps(config.to_dict()))["manifold"]["sigma"] == 0.05
    with pytest.raises(TypeError, match="manifold: expected a manifold's name"):
        SuiteConfig(manifold=3)


def test_robustness_of_a_run_refuses_the_comparisons_options(tmp_path, capsys):
    """``robustness --run`` scores the run's own manifold, data and network: the options that set
    up the comparison's runs are refused by name, not ignored (issue 25)."""
    with pytest.raises(SystemExit) as stop:
        main(["robustness", "--run", str(tmp_path), "--manifold", "cube", "--n-train", "50", "--widths", "8",
              "--sigma", "0.05"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "--manifold, --n-train, --widths, --sigma: only without --run" in err and "--budgets" in err
