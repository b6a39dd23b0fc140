"""Multi-channel inputs ([C, H, W], a user's frames) on every path that draws or reads images, and
per-output test metrics named by the manifold (issue 25, item 4)."""

import json

import attrs
import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.config import DataConfig, ExperimentConfig
from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.experiment import run_experiment
from manifoldtrain.manifold import target_names
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.network_jets import network_jet, network_jet_nested
from manifoldtrain.nn import ConvNetConfig, MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.plotting import plot_image_jet, plot_worst_case, show
from manifoldtrain.training import TrainConfig

from toy_manifolds import BlobFrames, SettingsSphere, Sphere

FRAMES = "toy_manifolds:BlobFrames"

# BlobFrames' targets are the point itself: no second derivatives, which the second-order term says.
pytestmark = pytest.mark.filterwarnings("ignore:d2 \\(full\\)")


def frames_config(model=None, epochs=2):
    return ExperimentConfig(
        manifold=BlobFrames(), data=DataConfig(n_train=24, n_test=8, seed=3, split_seed=3),
        model=model or ConvNetConfig(channels=(3, 4), hidden=(8,)), objective=Objective.second_order(),
        train=TrainConfig(epochs=epochs, batch_size=8, progress=False, eval_every=1),
    )


@pytest.fixture(scope="module")
def frames_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "run"
    run_experiment(frames_config(), out, progress=False)
    return out


def test_the_conv_net_takes_channels_and_its_jets_are_right():
    data = generate_jets(BlobFrames(), 6, seed=0, progress=False)
    assert data.inputs.value.shape == (6, 2, 9, 9)
    model = build_model(ConvNetConfig(channels=(3,), hidden=(5,)), data.inputs.value, data.targets.value)
    conv = [layer for layer in model if isinstance(layer, torch.nn.Conv2d)]
    assert conv[0].in_channels == 2  # both frames, not one image of 2 x 9 rows
    assert not any(isinstance(layer, torch.nn.Unflatten) for layer in model)
    assert model(data.inputs.value).shape == (6, 4)
    fast, ref = network_jet(model, data.inputs), network_jet_nested(model, data.inputs)
    for a, b in zip(fast.components(), ref.components()):
        torch.testing.assert_close(a, b)
    # One-channel images [H, W] still get a channel of their own.
    cube = generate_jets(Cube(image_size=9, extent=0.5, sigma=0.08), 3, order=0, progress=False)
    model = build_model(ConvNetConfig(channels=(2,), hidden=(4,)), cube.inputs.value, cube.targets.value)
    assert [m.in_channels for m in model if isinstance(m, torch.nn.Conv2d)] == [1]
    with pytest.raises(ValueError, match=r"ConvNetConfig needs images \[n, H, W\] or \[n, C, H, W\], got \[n, 1, 2, 3, 4\]"):
        build_model(ConvNetConfig(), torch.rand(4, 1, 2, 3, 4), torch.rand(4, 2))


def test_show_draws_every_channel(tmp_path, capsys):
    fig = show(BlobFrames(), tmp_path / "f.png", second_order=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # value, 4 first and 10 second derivatives, for each of the 2 frames; each frame starts a row of 5.
    assert len(titles) == 2 * 15 and titles[0] == "channel 0: value" and titles[15] == "channel 1: value"
    assert "channel 1: d2/dtheta2dtheta3" in titles
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert panels[15].get_subplotspec().rowspan.start == 3  # 15 panels of frame 0 fill rows 0-2
    assert (tmp_path / "f.png").stat().st_size > 0
    jet = generate_jets(BlobFrames(), 2, seed=1, progress=False).inputs
    assert len([ax for ax in plot_image_jet(jet, 1).axes if ax.get_title()]) == 2 * 5
    with pytest.raises(ValueError, match=r"jet: expected an image Jet .*\[n, C, H, W\], got \[n, 4\]"):
        plot_image_jet(generate_jets(BlobFrames(), 2, progress=False).targets)
    with pytest.raises(ValueError, match=r"manifold: expected an image manifold .*got input_shape \(5,\)"):
        show(Sphere(), tmp_path / "s.png")
    # From the command line, a user's manifold by its import path, with its settings.
    assert main(["show", FRAMES, "--out", str(tmp_path / "cli.png"), "--size", "11", "--second-order"]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 0 and "wrote" in capsys.readouterr().out


def test_a_multi_channel_run_reports_per_output_metrics_and_its_robustness(frames_run, tmp_path, capsys):
    results = json.loads((frames_run / "results.json").read_text())
    per = results["test"]["per_output"]
    assert list(per) == ["x", "y", "vx", "vy"]  # the manifold's own names
    assert all(row["rmse"] > 0 and row["std"] > 0 and row["relative_rmse"] == pytest.approx(row["rmse"] / row["std"])
               for row in per.values())
    # evaluate, from the command line, on jets generated apart: the same names.
    assert main(["generate", FRAMES, "--n", "10", "--seed", "11", "--out", str(tmp_path / "jets"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(frames_run), "--data", str(tmp_path / "jets")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics["per_output"]) == ["x", "y", "vx", "vy"] and metrics["n"] == 10
    # The robustness of the run: its worst case drawn frame beside frame.
    assert main(["robustness", "--run", str(frames_run), "--noise-levels", "0.01", "--budgets", "0.02",
                 "--eval-samples", "4", "--attack-samples", "2", "--attack-steps", "1"]) == 0
    assert (frames_run / "worst_case.png").stat().st_size > 0


def test_worst_case_figure_of_channels(tmp_path):
    image = torch.rand(2, 5, 6)
    direction = torch.randn(2, 5, 6)
    direction /= direction.norm()
    plot_worst_case(image, [("a", 1.5, direction), ("b", 0.5, -direction)], 0.3, tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 0
    from manifoldtrain.robustness.suite import SuiteConfig, run_suite

    config = SuiteConfig(manifold=FRAMES, n_train=16, n_test=4, widths=(4,), depth=1, seconds_per_run=0.2,
                         objectives=("value",), noise_levels=(0.01,), budgets=(0.02,), eval_samples=2,
                         attack_samples=1, attack_steps=1, dtype="float64", progress=False)
    run_suite(tmp_path / "rob", config, echo=lambda line: None)
    assert (tmp_path / "rob" / "worst_case.png").stat().st_size > 0


def test_target_names_default_checked_and_recorded(tmp_path):
    assert Sphere().target_names == ("y0", "y1", "y2")
    assert target_names(Cube())[:4] == ("corner1_x", "corner1_y", "corner1_z", "corner2_x")
    assert target_names(PhaseRetrieval()) == PhaseRetrieval().coordinate_names
    obj = PhaseRetrieval(target_kind="object", object_size=4)
    assert len(target_names(obj)) == 2 * 4 * 4 and target_names(obj)[-1] == "im[3,3]"

    @attrs.frozen
    class Short(SettingsSphere):
        target_names = ("a", "b")

    @attrs.frozen
    class Twice(SettingsSphere):
        target_names = ("a", "b", "a")

    with pytest.raises(ValueError, match=r"^Short\.target_names: expected 3 non-empty strings, got \['a', 'b'\]$"):
        target_names(Short())
    with pytest.raises(ValueError, match=r"^Twice\.target_names: expected distinct names, got 'a' more than once$"):
        target_names(Twice())
    config = attrs.evolve(frames_config(MLPConfig(hidden=(4,)), epochs=1), manifold=Twice())
    with pytest.raises(ValueError, match=r"Twice\.target_names"):
        run_experiment(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_per_output_metrics_sum_to_the_overall_rmse():
    data = generate_jets(BlobFrames(), 12, seed=2, order=0, progress=False)
    model = build_model(MLPConfig(hidden=(4,)), data.inputs.value, data.targets.value)
    m = evaluate(model, data, output_names=BlobFrames().target_names)
    mean_square = sum(row["rmse"] ** 2 for row in m.per_output.values()) / 4
    assert mean_square == pytest.approx(m.rmse**2, rel=1e-9)
    # A model that predicts every output's test mean scores a relative RMSE of 1.
    mean = data.targets.value.mean(0)
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 9 * 9, 4).double())
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(mean)
    rel = [row["relative_rmse"] for row in evaluate(constant, data).per_output.values()]
    assert rel == pytest.approx([1.0] * 4)


def test_the_demo_on_another_manifold_claims_no_cube_facts(tmp_path, capsys, monkeypatch):
    import manifoldtrain.demo as demo

    assert "5-7x for the cube" in demo._busy_machine_note(3.0, 2, 2, cube=True)
    assert "cube" not in demo._busy_machine_note(3.0, 2, 2, cube=False)
    assert demo._is_the_cube(Cube()) and not demo._is_the_cube(Cube(image_size=9)) and not demo._is_the_cube(Sphere())
    monkeypatch.setattr(demo, "_load_average", lambda: 3.0)  # busy: the note is printed
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--quick", "--manifold", FRAMES, "--out", str(tmp_path / "d"), "--seconds-per-run", "0.3",
                     "--objectives", "value", "second", "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    assert "note: this machine is busy" in text
    assert "cube" not in text.lower() and "corner" not in text.lower()
    assert "per output: clean test RMSE / std of its test targets" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()[:1] in (["x"], ["vy"])}
    assert set(rows) == {"x", "vy"} and all(len(v) == 3 for v in rows.values())  # std, value, second
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert [list(r["test_per_output"]) for r in results["runs"]] == [["x", "y", "vx", "vy"]] * 2
    labels = " ".join(ax.get_xlabel() for ax in demo_report_axes(tmp_path / "d", results, monkeypatch))
    assert "over all 4 targets" in labels and "corner" not in labels


def demo_report_axes(out, results, monkeypatch):
    """The axes of the demo's report figure for the finished demo in ``out``."""
    import manifoldtrain.demo as demo
    import manifoldtrain.plotting as plotting

    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, **k: figures.append(fig))
    config = demo.DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in results["config"].items()})
    train, test = demo.make_data(config.experiment("second"), progress=False)
    histories = {r["objective"]: json.loads((out / f"run_{r['objective']}" / "results.json").read_text())["history"]
                 for r in results["runs"]}
    demo.plot_report(results["runs"], histories, train, test, out, config)
    return figures[0].axes
