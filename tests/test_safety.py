"""Output folders are safe (issue 25, items 6 and 8): one command at a time per folder (a
lock), temporary files of a killed command removed, ``--no-resume`` keeps the old run until
the new one has a checkpoint, exports say what they hold and refuse a float64 input; and the
default cadence of evaluations and checkpoints, with wall time reported beside training time."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import torch

from manifoldtrain._io import LOCK, MARKER, claim_output_folder, output_folder
from manifoldtrain.checkpoints import PREVIOUS_NAME, RunFiles
from manifoldtrain.cli import main
from manifoldtrain.config import config_from_dict
from manifoldtrain.data import generate_jets
from manifoldtrain.experiment import run_experiment
from manifoldtrain.export import export_info, export_run
from manifoldtrain.manifold import target_names
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.training import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint

from config_helpers import cube_toml
from conftest import ROOT

TOML = cube_toml(n_train=16, n_test=8, hidden=[8], train={"epochs": 2, "batch_size": 8})


def _config(**train):
    table = tomllib.loads(TOML)
    table["train"].update(train)
    return config_from_dict(table)


def _hold(folder, pid=4242):
    """Hold ``folder``'s lock through a file description of our own, as another process would
    (flock locks belong to open files, so this process's own claims conflict with it)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": pid, "host": "elsewhere", "command": "manifoldtrain train"}).encode())
    return fd


# ------------------------------------------------------------------ (a) the lock


def test_a_second_command_into_a_busy_folder_is_refused_naming_the_holder(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    out = tmp_path / "run"
    fd = _hold(out)
    try:
        for argv in (["train", "--config", str(tmp_path / "c.toml"), "--out", str(out)],
                     ["demo", "--quick", "--out", str(out), "--no-progress"]):
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and "Traceback" not in err
            assert f"--out: {out} is in use by another manifoldtrain command (process 4242 on elsewhere" in err
        with pytest.raises(BlockingIOError, match="out_dir: .* is in use by another manifoldtrain command"):
            run_experiment(_config(), out, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written, nothing claimed
    finally:
        os.close(fd)
    # The holder gone (its lock freed, its file left as a killed process leaves it): taken over, with a note.
    with pytest.warns(UserWarning, match=r"was locked by process 4242 on elsewhere \(manifoldtrain train\), which no longer runs"):
        results = run_experiment(_config(), out, progress=False)
    assert results["epochs"] == 2 and not (out / LOCK).exists()
    # Scoring a run writes into its folder: not while a train works there.
    fd = _hold(out)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["robustness", "--run", str(out), "--eval-samples", "4"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"--run: {out} is in use by another manifoldtrain command (process 4242" in err
    finally:
        os.close(fd)
    assert not (out / "robustness.json").exists()


def test_generate_into_a_cache_being_generated_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    fd = os.open(tmp_path / ".cache.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "cube", "--n", "4", "--out", str(cache), "--image-size", "9", "--no-progress"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"--out: {cache} is in use by another manifoldtrain command" in err
    finally:
        os.close(fd)
    assert main(["generate", "cube", "--n", "4", "--out", str(cache), "--image-size", "9", "--no-progress"]) == 0
    assert not (tmp_path / ".cache.lock").exists()


def test_nested_claims_of_one_process_share_the_lock(tmp_path):
    with output_folder(tmp_path / "run", "run") as out:
        assert (out / LOCK).is_file()
        with output_folder(out, "run"):
            pass
        assert (out / LOCK).is_file()  # still held by the outer block
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == os.getpid()
    assert not (out / LOCK).exists()


def test_a_killed_command_leaves_a_lock_and_temporaries_that_the_next_one_clears(tmp_path):
    out = tmp_path / "run"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from manifoldtrain._io import output_folder, atomic_path\n"
              f"with output_folder({str(out)!r}, 'run'):\n"
              f"    tmp = atomic_path({str(out / CHECKPOINT_NAME)!r}).__enter__()\n"
              "    tmp.write_bytes(b'half a checkpoint')\n"
              "    print('held', flush=True)\n"
              "    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError, match=f"process {proc.pid} on "):
            claim_output_folder(out, "run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in out.iterdir())
    assert LOCK in left and any(name.startswith(".checkpoint.pt.tmp-") for name in left)
    with pytest.warns(UserWarning, match=f"process {proc.pid} .* no longer runs"):
        with output_folder(out, "run"):
            assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK])
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


# ------------------------------------------------------------------ (b) temporaries


def test_temporaries_are_removed_but_not_the_users_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    (out / ".results.json.zz9x_a1b.json").write_text("mine too: recorded as theirs below")
    with output_folder(out, "run", force=True):  # forced open beside the user's files: they are recorded
        pass
    debris = [".checkpoint.pt.tmp-a1b2c3d4.pt", ".results.json.k9x8y7z6.json", ".write-test-abcd_123",
              ".config.toml.tmp-0000abcd.toml"]
    keep = [".notes.12345678", ".results.json.q1w2e3r4.txt", "checkpoint.pt.tmp-a1b2c3d4.pt"]
    for name in debris + keep:
        (out / name).write_text("x")
    (out / ".best.pt.tmp-aaaabbbb.pt.d").mkdir()  # folders are never ours to remove here
    with output_folder(out, "run", force=True):
        pass
    names = {p.name for p in out.iterdir()}
    assert not names & set(debris)
    assert set(keep) | {"thesis.tex", ".results.json.zz9x_a1b.json", ".best.pt.tmp-aaaabbbb.pt.d"} <= names


# ------------------------------------------------------------------ (c) --no-resume keeps the old run


def test_no_resume_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_experiment(_config(), out, progress=False)
    old = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "results.json", "config.toml")}

    original = Trainer._train_epoch

    def stopped(self, bar):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(learning_rate=0.01), out, resume=False, progress=False)
    assert not (out / CHECKPOINT_NAME).exists()
    assert {n: (out / PREVIOUS_NAME / n).read_bytes() for n in old} == old  # kept, set aside
    # Stopped again before its first checkpoint: still kept.
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="back in place"):
        run_experiment(_config(learning_rate=0.01), out, resume=False, progress=False)
    assert {n: (out / PREVIOUS_NAME / n).read_bytes() for n in old} == old
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    # The next run into the folder, resuming: the old run is back, complete, and resumed as it was.
    with pytest.warns(UserWarning, match="back in place"):
        again = run_experiment(_config(), out, progress=False)
    assert again["epochs"] == 2 and not (out / PREVIOUS_NAME).exists()
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 2
    assert (out / "config.toml").read_bytes() == old["config.toml"]
    # Started over and let finish: its first checkpoint removes the old run.
    fresh = run_experiment(_config(learning_rate=0.01), out, resume=False, progress=False)
    assert fresh["epochs"] == 2 and not (out / PREVIOUS_NAME).exists()
    assert load_checkpoint(out / CHECKPOINT_NAME)["train_config"]["learning_rate"] == 0.01


# ------------------------------------------------------------------ (d) exports


def test_an_export_says_what_it_holds_and_refuses_float64(tmp_path):
    run_experiment(_config(), tmp_path / "run", progress=False)
    out = export_run(tmp_path / "run", tmp_path / "model.pt2")
    info = export_info(out)
    assert info["manifold"]["class"].endswith("Cube")
    assert info["manifold"]["settings"]["image_size"] == 9 and info["manifold"]["settings"]["sigma"] == 0.08
    assert info["output_names"] == list(target_names(Cube())) and info["dtype"] == "float32"  # as the run recorded them
    program = torch.export.load(out).module()
    x = torch.rand(3, 9, 9)
    assert program(x).shape == (3, 9)
    with pytest.raises(RuntimeError, match="Tensor dtype mismatch! Expected: Float, Got: double"):
        program(x.double())


class NamedCube(Cube):
    """A cube whose class names its nine outputs (three corners' x, y, z)."""

    target_names = tuple(f"corner{c}.{axis}" for c in range(3) for axis in "xyz")


def test_output_names_come_from_the_manifold_class_where_it_declares_them():
    from manifoldtrain.export import output_names

    named = {"class": "test_safety:NamedCube", "settings": {}}
    assert output_names(named, [9]) == list(NamedCube.target_names)
    assert output_names(named, [3]) == ["y0", "y1", "y2"]  # not as many names as outputs: not these
    assert output_names({"class": "nosuch.module:Thing", "settings": {}}, [2]) == ["y0", "y1"]
    assert output_names(None, [2, 2]) == ["y0", "y1", "y2", "y3"]


# ------------------------------------------------------------------ item 8: cadence and wall time


def _small_trainer(folder, **settings):
    data = generate_jets(Cube(image_size=9, extent=0.5, sigma=0.08), 40, seed=3, progress=False)
    train, test = data.split(8, seed=0)
    model = build_model(MLPConfig(hidden=(8,)), train.inputs.value, train.targets.value, seed=0)
    config = TrainConfig(**{"epochs": 4, "batch_size": 8, "progress": False, **settings})
    return Trainer(model, Objective.first_order(), train, test, config, checkpoint_dir=folder)


def test_checkpoints_by_wall_time_by_default_and_every_n_epochs_when_asked(tmp_path, monkeypatch):
    assert TrainConfig().checkpoint_every is None and TrainConfig().checkpoint_interval == 60.0
    written = []
    save = RunFiles.save_checkpoint
    monkeypatch.setattr(RunFiles, "save_checkpoint", lambda self, state: written.append(state["epoch"]) or save(self, state))
    _small_trainer(tmp_path / "a").fit()
    assert written == [4]  # a short run: only at the end
    written.clear()
    _small_trainer(tmp_path / "b", checkpoint_every=2, checkpoint_interval=None).fit()
    assert written == [2, 4]
    written.clear()
    _small_trainer(tmp_path / "c", checkpoint_interval=1e-9).fit()
    assert written == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="checkpoint_interval"):
        TrainConfig(checkpoint_interval=0.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0)


def test_a_checkpoint_of_other_cadence_settings_still_resumes(tmp_path):
    first = _small_trainer(tmp_path, epochs=2, checkpoint_every=1, eval_overhead=None)
    first.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    state["train_config"]["checkpoint_every"] = 1  # as written before these settings left the identity
    state["train_config"]["progress"] = False
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    later = _small_trainer(tmp_path, epochs=2)
    assert later.resume() and later.epoch == 2


def test_test_evaluations_keep_to_their_share_of_the_time(tmp_path):
    def slow(model, data):
        time.sleep(0.05)
        return {"rmse": 1.0}

    trainer = _small_trainer(None, epochs=6, validation=0.25, eval_overhead=0.1)
    trainer.metrics = (slow,)
    trainer.fit()
    records = trainer.history.records
    assert all("validation" in r for r in records)  # the validation set, at every evaluation
    tested = [r["epoch"] for r in records if "test" in r]
    assert tested[-1] == 6 and len(tested) < 6  # the last always; others skipped while over the share
    every = _small_trainer(None, epochs=3, eval_overhead=None)
    every.metrics = (slow,)
    every.fit()
    assert all("test" in r for r in every.history.records)
    assert every.evaluation_seconds >= 3 * 0.05


def test_results_and_the_summary_report_wall_time_beside_training_time(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(TOML)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0 < summary["seconds"] < summary["wall_seconds"]
    assert results["wall_seconds"] == summary["wall_seconds"]
    assert results["seconds"] + results["evaluation_seconds"] + results["checkpoint_seconds"] < results["wall_seconds"]


def test_the_final_figures_are_the_last_evaluation_not_a_second_one(tmp_path, monkeypatch):
    from manifoldtrain import experiment
    from manifoldtrain.evaluation import evaluate
    from manifoldtrain.experiment import make_data, model_from_checkpoint

    calls = []
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: calls.append(k.get("order")) or evaluate(*a, **k))
    results = run_experiment(_config(), tmp_path / "run", progress=False)
    # The Trainer's last evaluation is of the same model, by the same function: only a forward
    # pass (order 0) adds each output's own RMSE.
    assert calls == [0]
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME))
    names = target_names(_config().manifold)
    assert evaluate(model, make_data(_config(), progress=False)[1], output_names=names).to_dict() == results["test"]
    with_best = run_experiment(_config(validation=0.25), tmp_path / "best", progress=False)
    assert calls == [0, None] and with_best["checkpoint"] == "best.pt"  # the best model: scored anew
