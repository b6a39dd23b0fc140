"""The project around the library: README commands, CI script, docs, examples, benchmarks, CLI."""

import json
import math
import re
import runpy
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manifoldtrain.cli import main
from manifoldtrain.manifolds import Cube

from conftest import ROOT, requires_cuda

README = (ROOT / "README.md").read_text()


def _quickstart_commands():
    section = README.split("## Quickstart", 1)[1]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)[:2]


def test_readme_commands_are_what_ci_runs():
    install, tests = _quickstart_commands()
    assert "pip install torch==2.13.0" in install  # the CPU wheel, pinned
    assert "manifoldtrain" in install.split("&&")[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and tests in ci


def test_readme_python_example_runs():
    code = re.search(r"```python\n(.*?)\n```", README, flags=re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "api.html").exists()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_run(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ROOT / "examples" / script
    quick = ["--quick"] if "--quick" in path.read_text() else []
    monkeypatch.setattr(sys, "argv", [script, *quick])
    runpy.run_path(str(path), run_name="__main__")


def test_render_benchmark_quick(tmp_path):
    out = tmp_path / "render.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "render.py"))
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["dtype"] for r in rows} == {"float32", "float64"}
    for r in rows:
        assert r["exact_samples_per_s"] > 0 and r["fd_samples_per_s"] > 0
        # The finite-difference jets approximate the exact ones (a check of the benchmark itself).
        assert r["fd_rel_error_d1"] < 1e-2


# ----------------------------------------------------------------- command line


def test_show_cube(tmp_path, capsys):
    out = tmp_path / "sub" / "cube.png"
    assert main(["show", "cube", "--out", str(out), "--seed", "3", "--second-order", "--sigma", "0.05"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    assert not list(out.parent.glob(".cube.png*"))  # no temporary left behind


def test_console_script_is_installed(tmp_path):
    # The script installed beside the interpreter running the tests, so this works with or without an
    # activated venv.
    script = Path(sys.executable).parent / "manifoldtrain"
    assert script.exists(), f"no console script at {script}: is the package installed (pip install -e .)?"
    out = tmp_path / "c.png"
    result = subprocess.run([str(script), "show", "cube", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "cube", "--out", "x.png", "--sigma", "-1"], "sigma: expected a number > 0"),
        (["show", "cube", "--out", "x.png", "--image-size", "1"], "--image-size: expected an int >= 2"),
        (["show", "cube", "--out", "x.png", "--seed", "-2"], "seed"),
        (["show", "cube", "--out", "x.png", "--blur", "2"], "unrecognized arguments: --blur"),
        (["show", "cube"], "--out"),
        (["show", "sphere", "--out", "x.png"], "invalid choice: 'sphere'"),
        (["show", "cube", "--out", "x.unknownformat"], "unknownformat"),
    ],
)
def test_cli_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("script", ["oracle_focal.py", "oracle_term_variance.py"])
def test_oracle_benchmarks_quick(script, tmp_path):
    import json

    out = tmp_path / "out.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / script))
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    assert "--quick" in json.loads(out.read_text())["command"]


def test_random_pair_gradients_benchmark(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "random_pair_gradients.py"))
    # The statistics on a case worked by hand: two steps G + e and G - e.
    G, e = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])
    stats, second = mod["noise_stats"]([G + e, G - e], G, rows=4, full_second_moment=torch.tensor([10.0, 16.0]))
    assert stats["relative_noise"] == pytest.approx(1 / 25) and stats["noise_times_rows"] == pytest.approx(4 / 25)
    assert stats["relative_bias"] == 0 and torch.equal(second, torch.tensor([10.0, 16.0]))
    assert stats["adam_second_moment_ratio_median"] == 1 and stats["signal_fraction"] == pytest.approx(25 / 26)
    out = tmp_path / "out.json"
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for state in ("initial", "trained"):
        rows = result["states"][state]["estimators"]
        assert set(rows) == {"full", "1 random", "2 random", "2x2 grid"}
        for r in rows.values():  # unbiased estimates: the mean step is G up to the spread of the steps
            assert r["objective"]["relative_bias"] < 3 * r["objective"]["bias_standard_error"]
        # The directions add noise to the second-order term's gradient, less with more of them.
        d2 = [rows[n]["d2"]["relative_noise"] for n in ("full", "2 random", "1 random")]
        assert d2 == sorted(d2)
    # Bad options are refused naming the option, before any work.
    for bad, message in ((["--directions", "0"], "--directions: expected integers >= 1, got [0]"),
                         (["--grids", "2", "-1"], "--grids: expected integers >= 1, got [2, -1]"),
                         (["--epochs", "-1"], "--epochs: expected an integer >= 0, got -1")):
        with pytest.raises(SystemExit):
            mod["main"](bad)
        assert message in capsys.readouterr().err


def test_train_speed_benchmark_quick(tmp_path):
    out = tmp_path / "speed.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "train_speed.py"))
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    impls = {(r["objective"], r["implementation"]) for r in result["step_cost"]}
    assert ("second", "taylor") in impls and ("second", "nested jvp") in impls and ("second", "random k=1") in impls
    base = result["step_cost"][0]["seconds_per_sample"]
    for r in result["step_cost"]:
        assert r["ratio_to_value"] == pytest.approx(r["seconds_per_sample"] / base)
    by_impl = {r["implementation"]: r["terms"] for r in result["step_cost"] if r["objective"] == "second"}
    assert by_impl["random k=2"] == ["value", "d1 (2 random)", "d2 (2 random)"]
    # The random-direction estimates average to the full terms (20 draws, within 5 standard errors).
    for r in result["estimate_spread"]:
        assert abs(r["mean"] - r["full"]) < 5 * r["relative_sd"] * r["full"] / 20**0.5, r
    tta = result["time_to_accuracy"]
    assert tta["best_value_rmse"] == min(rmse for _, rmse in tta["curves"]["value"])
    assert tta["best_second_rmse"] == min(rmse for _, rmse in tta["curves"]["second"])


def test_accuracy_benchmark_quick(tmp_path):
    out = tmp_path / "acc.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["objective"] for r in result["runs"]} == {"value", "first", "second"}
    by = {r["objective"]: r for r in result["runs"]}
    ratio = result["summary"]["ratio_value_to_second_test_rmse"]
    assert ratio[2] == [pytest.approx(by["value"]["test_rmse"] / by["second"]["test_rmse"])]
    for r in result["runs"]:
        assert r["best_test_rmse"] == min(rmse for _, rmse in r["curve"])
    assert result["meta"]["view"] == "wall-clock"
    assert (tmp_path / "acc.png").exists()


def test_accuracy_summary_reports_the_sample_sd_over_seeds():
    """Every benchmark's "mean ± sd" over seeds is the sample sd (n - 1); accuracy.py's too."""
    summarize = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))["summarize"]
    keys = ("test_rmse", "best_test_rmse", "test_rmse_d1", "test_rmse_d2", "epochs", "seconds")
    runs = [dict(dict.fromkeys(keys, 1.0), seed=s, objective=o, test_rmse=v)
            for s, o, v in [(0, "value", 4.0), (0, "second", 1.0), (1, "value", 6.0), (1, "second", 1.0),
                            (2, "value", 11.0), (2, "second", 1.0)]]
    summary = summarize(runs)
    assert summary["value"]["test_rmse"] == (pytest.approx(7.0), pytest.approx(statistics.stdev([4.0, 6.0, 11.0])))
    assert summary["ratio_value_to_second_test_rmse"][:2] == (pytest.approx(7.0), pytest.approx(3.605551275))
    assert summarize(runs[:2])["value"]["test_rmse"][1] == 0.0  # one seed: no spread


def test_accuracy_tails_rescores_the_runs_of_accuracy_py(tmp_path, capsys):
    """accuracy_tails.py loads the networks accuracy.py left, reproduces their recorded test
    RMSE, and its tail figures are those of the per-pose errors."""
    acc = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    ck, res = tmp_path / "ck", tmp_path / "q.json"
    assert acc["main"](["--quick", "--epochs", "4", "4", "3", "--objectives", "value", "second", "--threads", "1",
                        "--checkpoint-dir", str(ck), "--no-figure", "--out", str(res)]) == 0
    tails = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_tails.py"))
    out = tmp_path / "t.json"
    argv = ["--quick", "--results", str(res), "--checkpoint-dir", str(ck), "--n-common", "200"]
    assert tails["main"](argv + ["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = {r["objective"]: r for r in json.loads(res.read_text())["runs"]}
    nets = {x["objective"]: x for x in result["networks"]}
    for name, x in nets.items():
        assert x["rescored_own_test_rmse"] == pytest.approx(runs[name]["test_rmse"], rel=1e-4)
        bands = x["common"]["bands"]
        assert sum(b["n"] for k, b in bands.items() if "," not in k) == 200  # translation bands
        assert sum(b["n"] for k, b in bands.items() if "," in k) == 200  # angle x translation cells
        assert 0 < x["common"]["worst_share"] < 1
    assert result["ratios"]["own"]["per_seed"] == [pytest.approx(runs["value"]["test_rmse"] / runs["second"]["test_rmse"])]
    assert result["ratios"]["common"]["per_seed"] == [
        pytest.approx(nets["value"]["common"]["rmse"] / nets["second"]["common"]["rmse"])]
    # a widened training domain: the same test set re-scored; never mixed with unwidened runs
    ck2, res2 = tmp_path / "ck2", tmp_path / "q2.json"
    assert acc["main"](["--quick", "--epochs", "4", "4", "3", "--objectives", "value", "--threads", "1",
                        "--train-margin", "0.2", "--checkpoint-dir", str(ck2), "--no-figure", "--out", str(res2)]) == 0
    assert tails["main"](["--quick", "--results", str(res2), "--checkpoint-dir", str(ck2), "--n-common", "200",
                          "--out", str(tmp_path / "t2.json")]) == 0
    widened = json.loads((tmp_path / "t2.json").read_text())
    assert widened["meta"]["train_margin"] == 0.2
    assert widened["networks"][0]["rescored_own_test_rmse"] == pytest.approx(
        json.loads(res2.read_text())["runs"][0]["test_rmse"], rel=1e-4)
    with pytest.raises(SystemExit):
        tails["main"](["--quick", "--results", str(res), str(res2), "--checkpoint-dir", str(ck)])
    assert "--results: the files mix train_margin" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # its own output is not replaced
        tails["main"](argv + ["--out", str(out)])
    with pytest.raises(SystemExit, match="does not fit this data"):  # the paper's cube: not these networks
        tails["main"](argv[1:])
    figures = tails["tail_figures"](torch.tensor([100.0] + [1.0] * 199, dtype=torch.float64),
                                    torch.linspace(0, 1, 200, dtype=torch.float64),
                                    torch.linspace(1, 0, 200, dtype=torch.float64))
    assert figures["rmse"] == pytest.approx((299 / 200) ** 0.5)
    assert figures["worst_share"] == pytest.approx(101 / 299)  # the worst 1%: two poses of 200
    assert figures["rmse_without_worst"] == pytest.approx(1.0) and figures["median_pose_rms"] == pytest.approx(1.0)
    # the worst two: pose 0 (radius 0, angle 1) and one of the rest (ties): never in the outer shell
    assert figures["worst_at_large_angle"] >= 0.5 and figures["worst_in_outer_shell"] <= 0.5


@pytest.mark.parametrize("script", ["accuracy.py", "accuracy_vs_data.py", "render.py"])
@pytest.mark.parametrize("device, message", [("gpu", r"--device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
                                             ("cuda:7", r"--device: 'cuda:7' asked for")])
def test_benchmarks_name_a_bad_device(tmp_path, capsys, script, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    mod = runpy.run_path(str(ROOT / "benchmarks" / script))
    argv = ["--quick", "--device", device] + (["--work", str(tmp_path / "w")] if script == "accuracy_vs_data.py" else [])
    with pytest.raises(SystemExit):
        mod["main"](argv)
    assert re.search("argument " + message, capsys.readouterr().err)  # argparse's usage error
    assert not (tmp_path / "w").exists()  # nothing was created


def test_accuracy_vs_data_passes_the_device_and_threads_on():
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_vs_data.py"))
    out = Path("w/n8/s0_second.json")
    argv = mod["_accuracy_argv"](8, 0, "second", (2, 2, 1), 4, False, out)
    assert "--device" not in argv and argv[argv.index("--threads") + 1] == "1"
    argv = mod["_accuracy_argv"](8, 0, "second", (2, 2, 1), 4, False, out, "cuda:1", 2)
    assert argv[argv.index("--device") + 1] == "cuda:1" and argv[argv.index("--threads") + 1] == "2"


@requires_cuda
def test_accuracy_benchmark_on_cuda(tmp_path):
    out = tmp_path / "acc.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    assert mod["main"](["--quick", "--epochs", "3", "2", "1", "--device", "cuda", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["device"].startswith("cuda") and result["meta"]["device_name"]
    assert all(math.isfinite(r["test_rmse"]) for r in result["runs"])


def test_accuracy_benchmark_converged_view_combines_parts(tmp_path):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    parts = []
    for objectives in (["value", "first"], ["second"]):
        parts.append(tmp_path / f"{objectives[0]}.json")
        argv = ["--quick", "--epochs", "3", "2", "1", "--objectives", *objectives, "--out", str(parts[-1])]
        assert mod["main"](argv) == 0
    out = tmp_path / "all.json"
    assert mod["main"](["--combine", *map(str, parts), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["view"] == "converged"
    assert [(r["objective"], r["epochs"]) for r in result["runs"]] == [("value", 3), ("first", 2), ("second", 1)]
    assert "ratio_value_to_second_test_rmse" in result["summary"]
    with pytest.raises(SystemExit):  # the same runs twice
        mod["main"](["--combine", str(parts[0]), str(parts[0])])


def test_accuracy_benchmark_value_runs_render_values_only_and_score_the_same(tmp_path):
    """A value-only run renders order-0 training jets and its order-2 test set alone; it must
    train and score the value network as the run that renders everything at order 2."""
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    results = []
    for objectives in (["value"], ["value", "second"]):
        out = tmp_path / f"{len(objectives)}.json"
        assert mod["main"](["--quick", "--epochs", "3", "2", "1", "--objectives", *objectives, "--out", str(out),
                            "--no-figure"]) == 0
        results.append(next(r for r in json.loads(out.read_text())["runs"] if r["objective"] == "value"))
    alone, together = results
    for key in ("test_rmse", "test_rmse_d1", "test_rmse_d2", "train_rmse"):
        assert alone[key] == pytest.approx(together[key], rel=1e-5), key
    assert math.isfinite(alone["test_rmse_d2"])


def test_accuracy_benchmark_network_and_d2_weight_are_settings(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    built = mod["build_objectives"](0.1)
    assert [t.weight for t in built["second"].terms] == [1.0, 1.0, 0.1]
    assert built["second_d2r1"].terms[2].weight == 0.1 and built["second_g2"].terms[2].weight == 0.1
    assert [t.weight for t in mod["OBJECTIVES"]["second"].terms] == [1.0, 1.0, mod["D2_WEIGHT"]]
    parts = []
    for extra in ([], ["--hidden", "6", "5", "--d2-weight", "0.1"]):
        parts.append(tmp_path / f"p{len(parts)}.json")
        argv = ["--quick", "--epochs", "1", "1", "1", "--objectives", "second", "--no-figure", "--out", str(parts[-1])]
        assert mod["main"](argv + extra) == 0
    meta = json.loads(parts[1].read_text())["meta"]
    assert meta["hidden"] == [6, 5] and meta["d2_weight"] == 0.1
    assert meta["objectives"]["second"][-1] == "weights [1.0, 1.0, 0.1]"
    capsys.readouterr()
    with pytest.raises(SystemExit):  # other networks and weights are not seeds of one experiment
        mod["main"](["--combine", *map(str, parts)])
    assert "--combine: the files mix hidden" in capsys.readouterr().err
    for bad, message in ((["--hidden", "4", "0"], "--hidden: expected a non-empty list of positive ints, got [4, 0]"),
                         (["--hidden", "4", str(10**9)], "--hidden: expected widths <= "),
                         (["--d2-weight", "0"], "--d2-weight must be a positive finite number")):
        with pytest.raises(SystemExit):
            mod["main"](["--quick", *bad])
        assert message in capsys.readouterr().err


def test_accuracy_benchmark_train_margin_widens_the_training_poses_only(tmp_path, capsys):
    """--train-margin M: each training pose is the unwidened run's pose with its rotation angle
    and translation scaled by 1 + M; the test set is the unwidened run's, to the bit."""
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    cube = mod["benchmark_cube"](quick=True)
    assert mod["training_cube"](cube, 0.0) is cube
    seen = []

    class Spy(mod["Trainer"]):
        def __init__(self, model, objective, train, test, *args, **kwargs):
            seen.append((train.points.clone(), test.points.clone(), test.inputs.value.clone()))
            super().__init__(model, objective, train, test, *args, **kwargs)

    mod["run"].__globals__["Trainer"] = Spy
    try:
        for margin in ("0", "0.5"):
            out = tmp_path / f"m{margin}.json"
            assert mod["main"](["--quick", "--epochs", "1", "1", "1", "--objectives", "second", "--no-figure",
                                "--train-margin", margin, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["meta"]["train_margin"] == 0.5
    finally:
        mod["run"].__globals__["Trainer"] = mod["Trainer"]
    (train0, test0, images0), (train1, test1, images1) = seen[0], seen[1]
    assert torch.equal(test0, test1) and torch.equal(images0, images1)
    for part in (slice(0, 3), slice(3, 6)):  # rotation vector, translation: same directions, 1.5x the size
        torch.testing.assert_close(train1[:, part], 1.5 * train0[:, part], rtol=1e-6, atol=1e-7)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # another training domain is another experiment
        mod["main"](["--combine", str(tmp_path / "m0.json"), str(out)])
    assert "--combine: the files mix train_margin" in capsys.readouterr().err
    for bad in ("-0.1", "nan", "2"):
        with pytest.raises(SystemExit):
            mod["main"](["--quick", "--train-margin", bad])
        assert "--train-margin must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [(None, r"--combine: cannot read \S*part\.json"), ("{", r"--combine: cannot read \S*part\.json"),
     ("{}", r"--combine: \S*part\.json is not a results file")],
)
def test_accuracy_benchmark_combine_names_bad_files(tmp_path, capsys, content, message):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    path = tmp_path / "part.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit):
        mod["main"](["--combine", str(path)])
    assert re.search(message, capsys.readouterr().err)


def test_accuracy_vs_data_sweep_resumes_and_fits(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_vs_data.py"))
    assert mod["epochs_at"](4000, (1000, 1000, 800), 2000) == (500, 500, 400)
    assert mod["epochs_at"](1000, (1000, 1000, 800), 2000) == (1000, 1000, 800)
    # One reference size per objective: value keeps equal steps above 2000, the derivatives equal epochs to 8000.
    assert mod["epochs_at"](4000, (1000, 1000, 800), (2000, 8000, 8000)) == (500, 1000, 800)
    assert mod["epochs_at"](16000, (1000, 1000, 800), (2000, 8000, 8000)) == (125, 500, 400)
    work, out = tmp_path / "work", tmp_path / "sum.json"
    argv = ["--quick", "--work", str(work), "--sizes", "24", "48", "--seeds", "0", "1", "--objectives", "value",
            "second", "--epochs", "4", "4", "2", "--reference-size", "24", "--jobs", "1"]
    assert mod["main"](argv + ["--out", str(out)]) == 0
    parts = sorted(p.relative_to(work).as_posix() for p in work.rglob("*.json"))
    assert parts == [f"n{n}/s{s}_{o}.json" for n in (24, 48) for s in (0, 1) for o in ("second", "value")]
    assert not list(work.rglob("*.png"))  # the parts are JSON only (accuracy.py --no-figure)
    command = json.loads((work / "n24" / "s0_value.json").read_text())["meta"]["command"].split()
    assert Path(command[1]).name == "accuracy.py" and command[2:4] == ["--quick", "--n-train"]  # run in-process
    runs = json.loads(out.read_text())["runs"]
    assert {(r["n_train"], r["epochs"]) for r in runs if r["objective"] == "value"} == {(24, 4), (48, 2)}
    summary = json.loads(out.read_text())["summary"]
    by = {(r["n_train"], r["seed"], r["objective"]): r["test_rmse"] for r in runs}
    for row in summary["table"]:
        n = row["n_train"]
        ratios = [by[n, s, "value"] / by[n, s, "second"] for s in (0, 1)]
        assert row["value_over_second"]["per_seed"] == pytest.approx(ratios)
    # The fit is least squares of log ratio on log n; with two sizes it passes through the two means of logs.
    fit = summary["fit_value_over_second"]
    for n in (24, 48):
        mean_log = sum(math.log(by[n, s, "value"] / by[n, s, "second"]) for s in (0, 1)) / 2
        assert math.log(fit["fitted"][str(n)]) == pytest.approx(mean_log)
    assert all(row[o]["devices"] == ["cpu"] for row in summary["table"] for o in ("value", "second"))
    assert (tmp_path / "sum.png").exists()
    assert not list(work.rglob("*.checkpoints"))  # removed once each part was written
    # A second call runs nothing new: every part exists.
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.json")}
    capsys.readouterr()
    assert mod["main"](argv) == 0
    assert "8 runs, 8 already done, 0 to run" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*.json")}
    # Parts trained at another budget than the rule given are refused (named), before anything runs.
    other = argv[:argv.index("--reference-size")] + ["--reference-size", "24", "48", "48"]
    with pytest.raises(SystemExit, match=r"s0_second\.json trained second for 1 epochs at 48 samples; this sweep's "
                                         r"budget there is 2"):
        mod["main"](other + ["--summarize"])
    with pytest.raises(SystemExit, match="budget there is 2"):
        mod["main"](other + ["--sizes", "96"])
    assert not (work / "n96").exists()
    with pytest.raises(SystemExit):
        mod["main"](argv[:-2] + ["--reference-size", "24", "48"])  # two sizes: neither one nor three
    assert "--reference-size: expected one positive size or three" in capsys.readouterr().err
    part = json.loads((work / "n24" / "s0_second.json").read_text())
    part["runs"][0]["objective"] = "second_r1"  # another objective of accuracy.py: not this sweep's
    (tmp_path / "odd" / "n24").mkdir(parents=True)
    (tmp_path / "odd" / "n24" / "s0_second_r1.json").write_text(json.dumps(part))
    with pytest.raises(SystemExit, match="s0_second_r1.json holds a run of objective 'second_r1'; this sweep compares"):
        mod["main"](["--work", str(tmp_path / "odd"), "--summarize"])


def test_accuracy_vs_data_imports_only_matching_budgets(tmp_path):
    acc = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_vs_data.py"))
    part = tmp_path / "part.json"
    assert acc["main"](["--quick", "--n-train", "24", "--epochs", "4", "4", "2", "--objectives", "value",
                        "--out", str(part)]) == 0
    work = tmp_path / "work"
    assert mod["main"](["--work", str(work), "--import", str(part), "--epochs", "4", "4", "2",
                        "--reference-size", "24"]) == 0
    assert [p.name for p in work.rglob("*.json")] == ["s0_value.json"]
    with pytest.raises(SystemExit, match="trained value for 4 epochs at 24 samples; this sweep's budget there is 8"):
        mod["main"](["--work", str(tmp_path / "other"), "--import", str(part), "--epochs", "8", "4", "2",
                     "--reference-size", "24"])


def test_distributed_benchmark_quick(tmp_path):
    out = tmp_path / "dist.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "distributed.py"))
    assert mod["main"](["--quick", "--processes", "2", "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["world_size"] == 2 and row["threads_per_process"] == 1
    assert row["samples_per_s"] == pytest.approx(row["steps"] * row["batch"] / row["seconds"])
    assert 0 < row["all_reduce_ms_per_step"] < row["step_ms"]
    (alone,) = json.loads(out.read_text())["all_reduce_alone"]  # the all-reduce without waiting, same model
    (m,) = Cube(image_size=9, extent=0.5, sigma=0.08).target_shape
    assert alone["processes"] == 2 and alone["calls"] == 3 and alone["parameters"] == (81 * 8 + 8) + (8 * m + m)
    assert 0 < alone["min_ms"] <= alone["median_ms"] <= alone["max_ms"]


def test_data_memory_benchmark_quick(tmp_path):
    out = tmp_path / "mem.json"
    mod = runpy.run_path(str(ROOT / "benchmarks" / "data_memory.py"))
    assert mod["main"](["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["size_gb"], r["source"]) for r in result["memory"]] == [(0.002, "shards"), (0.002, "memory"),
                                                                       (0.008, "shards")]
    for r in result["memory"]:
        assert set(r["peak_rss_mb"]) == {"start", "open", "statistics", "training"} and r["max_rss_mb"] > 0
    rows = {r["data"]: r for r in result["equal_time"]}
    assert set(rows) == {"cached", "on-the-fly fresh", "on-the-fly fresh f32", "on-the-fly pool f32"}
    assert rows["cached"]["distinct_samples"] == 96 and rows["on-the-fly pool f32"]["distinct_samples"] <= 96
    assert rows["on-the-fly fresh"]["distinct_samples"] == rows["on-the-fly fresh"]["steps"] * 16


def test_accuracy_benchmark_continues_from_its_checkpoints(tmp_path):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy.py"))
    argv = ["--quick", "--epochs", "4", "4", "2", "--objectives", "value", "--checkpoint-dir", str(tmp_path / "ck")]
    assert mod["main"](argv + ["--out", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "ck" / "s0_value" / "checkpoint.pt").exists()
    # Run again: the finished run is continued from its checkpoint (no further epochs), same result.
    assert mod["main"](argv + ["--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{k}.json").read_text())["runs"][0] for k in "ab")
    assert b["epochs"] == a["epochs"] == 4 and b["test_rmse"] == a["test_rmse"] and b["curve"] == a["curve"]
    with pytest.raises(SystemExit):  # a wall-clock run is not continued
        mod["main"](["--quick", "--checkpoint-dir", str(tmp_path / "x")])
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit):  # a file where the checkpoint folder should be: named, kept
        mod["main"](argv[:-1] + [str(tmp_path / "file"), "--out", str(tmp_path / "c.json")])
    sweep = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_vs_data.py"))
    with pytest.raises(SystemExit):
        sweep["main"](["--work", str(tmp_path / "file"), "--summarize"])
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "c.json").exists()


def test_gpu_checks_script_parses_and_runs_only_project_commands():
    """benchmarks/gpu_checks.sh (run on a GPU machine; smoke-run it with DEVICE=cpu QUICK=1) is
    valid bash, and every Python step it runs is one of the benchmarks or the CUDA tests."""
    script = ROOT / "benchmarks" / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for name in ("render.py", "accuracy_vs_data.py"):
        assert f"benchmarks/{name}" in text and (ROOT / "benchmarks" / name).exists()
    assert "-m pytest -q -p no:cacheprovider -m cuda" in text


def test_robustness_converged_benchmark_quick(tmp_path, capsys):
    import json

    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_converged.py"))
    out = tmp_path / "summary.json"
    assert mod["main"](["--quick", "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    parts = sorted((tmp_path / "w" / "parts").glob("*.json"))
    assert len(parts) == len(mod["plan"](mod["QUICK"])) == 8  # invariance-adversarial too
    part = json.loads(parts[0].read_text())
    assert {"test_rmse", "amplification", "validation_rmse", "validation_amplification", "reference_amplification",
            "adversarial_error", "best_epoch"} <= set(part)
    assert not (tmp_path / "w" / "runs" / parts[0].stem).exists()  # a finished run keeps only its part
    summary = json.loads(out.read_text())
    assert "--quick" in summary["command"]
    assert (tmp_path / "summary.png").stat().st_size > 0  # the trade-off figure, means over seeds
    w8 = summary["summary"]["w8"]
    assert set(w8["pareto"]["0"]) == {"invariance", "control", "oracle"}
    assert w8["ratios"]["oracle_robust: accuracy ratio"]["n"] == 1
    # A second call finds every part and trains nothing.
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert mod["main"](["--quick", "--work", str(tmp_path / "w")]) == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps
    assert "width 8: reference amplification" in capsys.readouterr().out


def test_robustness_curve_benchmark_quick(tmp_path, capsys):
    import json

    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_curve.py"))
    out = tmp_path / "curve.json"
    result = mod["main"](["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1, 2] == [r["epoch"] for r in result["rows"]]  # the quick budget, every epoch
    assert all(r["test_amplification"] > 0 and r["validation_rmse"] > 0 for r in rows)
    assert result["best_epoch"] in (1, 2) and "--quick" in result["command"]
    # The chosen epoch is the one of lowest validation RMSE, as robustness_converged.py keeps.
    assert result["best_epoch"] == min(rows, key=lambda r: r["validation_rmse"])["epoch"]
    with pytest.raises(SystemExit):  # never replaces a file
        mod["main"](["--quick", "--out", str(out)])
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod["main"](["--quick", "--objective", "nope", "--out", str(tmp_path / "x.json")])
    assert "--objective: expected one of" in capsys.readouterr().err


def test_robustness_converged_summary_chooses_on_validation_and_scores_one_network():
    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_converged.py"))

    def part(name, strength, family, rmse, amp, val_rmse, val_amp, seed=0):
        return dict(seed=seed, width=8, objective=name, strength=strength, family=family, test_rmse=rmse,
                    amplification=amp, invariance_part=amp, sensitivity_part=amp, validation_rmse=val_rmse,
                    validation_amplification=val_amp, adversarial_error={"0.3": amp}, noisy_rmse={"0.01": rmse},
                    best_epoch=1, epochs=10, seconds=1.0, reference_amplification=1.0)

    parts = [
        part("value", None, "invariance", 1.0, 5.0, 1.0, 5.0),
        part("invariance-noise", 0.1, "invariance", 0.5, 3.0, 2.0, 3.0),  # best on test, not on validation
        part("invariance-jacobian", 0.3, "invariance", 3.0, 1.0, 3.0, 1.0),
        part("second", None, "control", 0.1, 4.0, 0.1, 4.0),
        part("oracle-hessian", 1.0, "oracle", 0.25, 0.5, 0.25, 0.5),
        part("oracle-hessian", 0.3, "oracle", 0.2, 2.0, 0.2, 2.0),
    ]
    s = mod["summarize"](parts)["w8"]
    row = s["per_seed"][0]
    assert row["invariance_accurate"] == "value" and row["invariance_robust"] == "invariance-jacobian 0.3"
    assert row["oracle_robust"] == "oracle-hessian 1"
    assert row["oracle_robust: accuracy ratio"] == 1.0 / 0.25  # the same network on both axes
    assert row["oracle_robust: amplification ratio"] == 1.0 / 0.5
    assert row["oracle_robust: amplification ratio to the invariant limit"] == 1.0 / 0.5  # reference 1.0
    assert s["ratios"]["oracle_matched: amplification ratio to the invariant limit"]["n"] == 1
    assert row["oracle_robust: dominated by"] == []
    # Matched: the most robust oracle network at least as accurate (validation) as the most accurate invariance one.
    assert row["oracle_matched"] == "oracle-hessian 1"
    parts[4]["validation_rmse"] = 1.5  # now less accurate than value on validation: the other one is matched
    assert mod["summarize"](parts)["w8"]["per_seed"][0]["oracle_matched"] == "oracle-hessian 0.3"
    assert [name for name, *_ in s["pareto"][0]["oracle"]] == ["oracle-hessian 0.3", "oracle-hessian 1"]
    # A run whose best validation epoch comes at the end of its budget is flagged as maybe unconverged.
    assert s["runs"]["second"]["late_best"] == 0
    parts[3]["best_epoch"] = 10
    summary = mod["summarize"](parts)
    assert summary["w8"]["runs"]["second"]["late_best"] == 1
    assert "may not be converged): second (1 of 1)" in mod["format_summary"](summary)
    # A seed that lacks one of the expected runs is left out of the choices and ratios.
    expected = {"value", "invariance-noise 0.1", "invariance-jacobian 0.3", "oracle-hessian 1", "oracle-hessian 0.3"}
    assert mod["summarize"](parts, expected=expected)["w8"]["incomplete"] == {}
    partial = parts + [dict(parts[0], seed=1), dict(parts[4], seed=1)]
    s2 = mod["summarize"](partial, expected=expected)["w8"]
    assert [r["seed"] for r in s2["per_seed"]] == [0] and s2["incomplete"] == {
        1: ["invariance-jacobian 0.3", "invariance-noise 0.1", "oracle-hessian 0.3"]}
    assert "seed 1: incomplete, left out" in mod["format_summary"](mod["summarize"](partial, expected=expected))
    assert s2["runs"]["value"]["seeds"] == [0]  # every row over the same (complete) seeds
    only_partial = mod["summarize"](partial[-2:], expected=expected)["w8"]  # no complete seed at all
    assert only_partial["runs"] == {} and only_partial["reference_amplification"]["n"] == 2
    assert "width 8" in mod["format_summary"]({"w8": only_partial})
    assert mod["expected_runs"](mod["FULL"]) == {
        "value", "invariance-noise 0.01", "invariance-noise 0.03", "invariance-noise 0.1", "invariance-noise 0.3",
        "invariance-noise 1", "invariance-jacobian 0.03", "invariance-jacobian 0.1", "invariance-jacobian 0.3",
        "invariance-jacobian 1", "invariance-adversarial 0.1", "invariance-adversarial 0.3", "invariance-adversarial 1",
        "oracle-random 1", "oracle-hessian 0.3", "oracle-hessian 1"}
    assert mod["expected_runs"](dict(mod["FULL"], only=("second",))) == mod["expected_runs"](mod["FULL"])
    # Parts of one run trained for different budgets are not averaged together.
    parts.append(dict(parts[3], seed=1, epochs=20))
    with pytest.raises(ValueError, match="second at width 8 .* different epoch budgets"):
        mod["summarize"](parts)


def test_accuracy_finish_benchmark_quick(tmp_path):
    import json

    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_finish.py"))
    out = tmp_path / "s.json"
    assert mod["main"](["--quick", "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) == set(mod["RUNS"])
    parts = {p["run"]: p for p in result["parts"]}
    # Each full-batch phase keeps its best weights: its training loss never ends above where it started.
    for name in ("second+rprop", "second+lbfgs", "staged"):
        for phase in parts[name]["phases"]:
            assert phase["loss_end"] <= phase["loss_start"] and phase["iterations"] >= 1
    assert [p["objective"] for p in parts["staged"]["phases"]] == [["value", "d1 (full)"], ["value"]]
    # The finishes start from the saved second-order network, loaded as plain weights.
    assert (tmp_path / "w" / "s0_second.pt").is_file()


def test_accuracy_finish_summary_of_no_parts_is_an_error(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "accuracy_finish.py"))
    out = tmp_path / "s.json"
    out.write_text("mine")
    assert mod["main"](["--work", str(tmp_path / "empty"), "--summarize", "--out", str(out)]) == 1
    assert "no parts" in capsys.readouterr().err
    assert out.read_text() == "mine"  # nothing summarised, nothing replaced


def test_robustness_converged_plan_only_and_shared_work_folder(tmp_path):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_converged.py"))
    settings = dict(mod["FULL"], widths=(128,), seeds=(0,), only=("second", "oracle-hessian-1"))
    assert mod["plan"](settings) == [(0, 128, "second", None), (0, 128, "oracle-hessian", 1.0)]
    run = (0, 128, "second", None)
    assert not mod["_taken"](tmp_path, run)
    log = tmp_path / "logs" / "s0-w128-second.log"
    log.parent.mkdir()
    log.write_text("")  # another sweep just started it
    assert mod["_taken"](tmp_path, run)
    import os
    os.utime(log, (0, 0))  # a log from long ago, no learning curve: a stopped run, to resume
    assert not mod["_taken"](tmp_path, run)
    mod["part_path"](tmp_path, *run).parent.mkdir()
    default = settings["epochs"]["second"]
    mod["part_path"](tmp_path, *run).write_text(json.dumps({"epochs": default}))
    assert mod["_taken"](tmp_path, run)
    # A part of another epoch budget is not silently kept as if it were this one's.
    assert mod["budget_mismatches"](tmp_path, settings) == []
    with pytest.raises(SystemExit, match=f"s0-w128-second.json: {default} epochs, asked for {2 * default}"):
        mod["run_all"](tmp_path, dict(settings, epochs={"value": 1000, "second": 2 * default}), 1, 1, [])


def test_robustness_converged_plans_the_adversarial_baseline_by_default():
    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_converged.py"))
    one = dict(mod["FULL"], widths=(128,), seeds=(0,))
    adversarial = [r for r in mod["plan"](one) if r[2] == "invariance-adversarial"]
    assert [r[3] for r in adversarial] == [0.1, 0.3, 1.0]
    assert {"invariance-adversarial 0.3", "invariance-noise 0.03", "oracle-hessian 1"} <= mod["expected_runs"](one)
    # --adversarial-strengths with no values: none planned, and a seed is complete without them.
    none = dict(one, adversarial_strengths=())
    assert not [r for r in mod["plan"](none) if r[2] == "invariance-adversarial"]
    assert not any(n.startswith("invariance-adversarial") for n in mod["expected_runs"](none))


def test_robustness_converged_reuse_takes_only_the_same_runs(tmp_path):
    import json

    mod = runpy.run_path(str(ROOT / "benchmarks" / "robustness_converged.py"))
    base = dict(mod["FULL"], widths=(128,), seeds=(0,), only=("value", "second"))
    src = tmp_path / "src"
    for name in ("value", "second"):
        budget = mod["RUNS"][name][1]
        part = {"objective": name, "strength": None, "epochs": base["epochs"][budget],
                "settings": mod["_plain"](base)}
        mod["write_json"](mod["part_path"](src, 0, 128, name, None), part)
    longer = dict(base, epochs={"value": 1000, "second": 2 * base["epochs"]["second"]})
    work = tmp_path / "w"
    # The value run is the same run at either second-order budget; the second-order run is not.
    assert mod["reuse_parts"](work, longer, [src]) == ["s0-w128-value.json"]
    copied = json.loads(mod["part_path"](work, 0, 128, "value", None).read_text())
    assert copied["reused_from"].endswith("s0-w128-value.json") and copied["epochs"] == 1000
    assert not mod["part_path"](work, 0, 128, "second", None).exists()
    assert mod["budget_mismatches"](work, longer) == []
    # A part of the same name scored otherwise is refused, naming the setting.
    other = tmp_path / "other"
    with pytest.raises(SystemExit, match=r"s0-w128-value.json was trained or scored with other settings \(n_train\)"):
        mod["reuse_parts"](other, dict(longer, n_train=2000), [src])
    assert mod["same_run"](copied, longer) == []
    with pytest.raises(SystemExit, match="--reuse: no parts folder in .*nowhere"):
        mod["reuse_parts"](other, longer, [tmp_path / "nowhere"])
