"""Messages of issue 25, items 5 and 7: refused resumes in words, hidden bars, full disks,
overflowing and huge settings, and physics settings that make the data meaningless."""

import errno
import warnings

import pytest

import manifoldtrain.checkpoints as checkpoints
import manifoldtrain.data.shards as shards
from manifoldtrain._plain import first_difference
from manifoldtrain.cli import main
from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.experiment import run_experiment
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.nn import ConvNetConfig, MLPConfig
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import TrainConfig
from plugin_helpers import full_disk_open

BIG = 2**63 - 1


def _config(**kw):
    base = dict(manifold=Cube(image_size=9, extent=0.5, sigma=0.08), data=DataConfig(n_train=8, n_test=4),
                model=MLPConfig(hidden=(4,)), objective=Objective.first_order(),
                train=TrainConfig(epochs=1, batch_size=8, progress=False))
    return ExperimentConfig(**(base | kw))


def test_a_refused_resume_names_the_setting_in_words(tmp_path):
    run_experiment(_config(), tmp_path / "run")
    with pytest.raises(ValueError, match=r"\(model.activation: 'tanh' in the checkpoint, 'sine' now\)"):
        run_experiment(_config(model=MLPConfig(hidden=(4,), activation="sine")), tmp_path / "run")
    with pytest.raises(ValueError, match=r"\(model.hidden\[0\]: 4 in the checkpoint, 5 now\)"):
        run_experiment(_config(model=MLPConfig(hidden=(5,))), tmp_path / "run")


def test_a_long_repr_that_differs_shows_the_line_that_differs():
    a, b = "Sequential(\n  (0): Affine()\n  (1): Tanh()\n)", "Sequential(\n  (0): Affine()\n  (1): Sine()\n)"
    assert first_difference(a, b, "layers") == "layers (line 3): '(1): Tanh()' in the checkpoint, '(1): Sine()' now"


def test_progress_false_hides_the_data_bar_too(tmp_path, capsys):
    run_experiment(_config(), tmp_path / "run")
    assert "sample/s" not in capsys.readouterr().err


def test_one_term_not_in_a_list_is_named():
    with pytest.raises(TypeError, match=r"terms: expected a tuple or list of terms, got one ValueTerm; write "
                                        r"Objective\(\(ValueTerm\(...\),\)\)"):
        Objective(ValueTerm())
    assert Objective([ValueTerm()]).names == Objective((ValueTerm(),)).names


@pytest.mark.parametrize("make, pattern", [
    (lambda: DataConfig(n_train=BIG), r"n_train: expected an int <= 2147483647"),
    (lambda: DataConfig(n_test=BIG), r"n_test: expected an int <= 2147483647"),
    (lambda: MLPConfig(hidden=(BIG,)), r"hidden: expected widths <= 16777216"),
    (lambda: ConvNetConfig(channels=(BIG, 4)), r"channels: expected widths <= 16777216"),
    (lambda: DerivativeTerm(order=2, directions=BIG), r"directions: expected an int <= 65536"),
    (lambda: Cube(sigma=1e308), r"sigma: expected a number <= 1000000.0"),
    (lambda: Cube(camera_distance=1e308), r"camera_distance: expected a number <= 1000000.0"),
    (lambda: Cube(extent=1e308), r"extent: expected a number <= 1000000.0"),
    (lambda: Cube(focal_length=1e308), r"focal_length: expected a number <= 1000000.0"),
    (lambda: ValueTerm(weight=1e308), r"weight: expected a number <= 1000000.0"),
    (lambda: DerivativeTerm(order=1, weight=1e308), r"weight: expected a number <= 1000000.0"),
    (lambda: TrainConfig(weight_decay=1e308), r"weight_decay: expected learning_rate \* weight_decay < 1"),
    (lambda: TrainConfig(learning_rate=0.5, weight_decay=2.0), r"weight_decay: expected learning_rate \* weight_decay < 1"),
])
def test_overflowing_and_huge_settings_are_refused_naming_the_argument(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_usual_settings_stay_accepted_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Cube(), Cube(image_size=9, extent=0.5, sigma=0.08), PhaseRetrieval(), TrainConfig(weight_decay=0.01)


def test_generate_on_a_full_disk_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shards, "open", full_disk_open(open), raising=False)
    with pytest.raises(SystemExit) as info:
        main(["generate", "cube", "--image-size", "9", "--n", "2", "--out", str(tmp_path / "j"), "--no-progress",
              "--order", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    assert "shard-00000" in err and "the disk is full (no space left on device)" in err, err


def test_a_checkpoint_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    def full(state, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    with pytest.raises(OSError, match=r"checkpoint.pt: the disk is full \(no space left on device\); nothing was "
                                      r"replaced"):
        run_experiment(_config(), tmp_path / "run")
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))


# ------------------------------------------------------------------ item 7: physics


def test_phase_retrieval_with_too_few_photons_is_refused_or_warned():
    with pytest.raises(ValueError, match=r"photons: expected at least 1 .* inputs all zero"):
        PhaseRetrieval(photons=0.5)
    with pytest.warns(UserWarning, match=r"photons: 10 photons per pattern over 1024 pixels: nearly every pixel"):
        PhaseRetrieval(photons=10.0)


def test_blobs_narrower_than_a_pixel_warn():
    with pytest.warns(UserWarning, match=r"widths: 0.01 is under a quarter of an object pixel \(0.125\)"):
        PhaseRetrieval(widths=(0.01, 0.24))


def test_a_cube_blur_that_makes_derivatives_vanish_or_the_image_blank_warns():
    with pytest.warns(UserWarning, match=r"sigma: 1e-05 is under a twentieth of a pixel.*derivatives vanish"):
        Cube(image_size=9, extent=0.5, sigma=1e-5)
    with pytest.warns(UserWarning, match=r"sigma: 5 is wider than the whole image.*nearly uniform"):
        Cube(image_size=9, extent=0.5, sigma=5.0)


def test_the_command_line_gives_the_librarys_warnings_in_one_line(tmp_path):
    import subprocess
    import sys

    # In a process of its own: pytest records warnings, and a recorded warning is never printed.
    code = ("import sys; from manifoldtrain.cli import main; "
            f"sys.exit(main(['show', 'cube', '--sigma', '0.0005', '--out', {str(tmp_path / 's.png')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "manifoldtrain show: warning: sigma: 0.0005 is under a twentieth of a pixel" in done.stderr
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr
    # Only the text changes: a recorder still gets the warning, and the hook is undone afterwards.
    before = warnings.formatwarning
    with pytest.warns(UserWarning, match="sigma: 0.0005"):
        assert main(["show", "cube", "--sigma", "0.0005", "--out", str(tmp_path / "u.png")]) == 0
    assert warnings.formatwarning is before
