"""Every row of the troubleshooting table (``docs/troubleshooting.rst``), tried.

One source: :data:`CASES` below holds each bad input, what the user gets and its class; the
table in the docs is generated from it (``python tests/test_troubleshooting.py`` prints it)
and :func:`test_docs_table_is_the_case_list` checks that the page holds exactly that table.

Classes: CLEAR (an error naming the argument or file and the remedy, no traceback), OK (the
input is accepted, correctly); the goal is no UNCLEAR, SILENT or DATA-LOSS row.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from manifoldtrain import Jet
from manifoldtrain.cli import main
from manifoldtrain.config import load_config
from manifoldtrain.data import generate_jets, load_jets, save_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.network_jets import network_jet
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, LossScales, NoiseInvarianceTerm, Objective, OracleTerm, ValueTerm
from manifoldtrain.robustness import evaluate_robustness, exact_oracle, taylor_oracle
from manifoldtrain.training import TrainConfig, Trainer

from config_helpers import cube_toml

DOCS = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.rst"
BEGIN, END = ".. begin-cases (generated from tests/test_troubleshooting.py)", ".. end-cases"
USER_TEXT = "the user's own notes: keep me\n"

CUBE = ["--image-size", "9", "--extent", "0.5", "--sigma", "0.08"]
TOML = cube_toml(
    n_train=8, n_test=4, hidden=[4],
    terms=({"kind": "value"}, {"kind": "derivative", "order": 1}),
    train={"epochs": 1, "batch_size": 8},
)


@dataclass
class Case:
    id: str
    where: str  # CLI, TOML or API
    input: str  # as the user typed it (rst inline literal)
    got: str  # what the user gets, abbreviated
    cls: str  # CLEAR, OK, UNCLEAR, SILENT, DATA-LOSS
    run: Callable = field(repr=False)


@dataclass
class World:
    """Shared, read-only inputs (module scope) and a fresh folder per case."""

    root: Path
    cache: Path
    run: Path
    data: object
    tmp: Path = None

    def path(self, text: str) -> str:
        """Expand {cache} {run} {tmp} {file} {folder} {toml}: {file}, {folder} are the user's own."""
        return text.format(cache=self.cache, run=self.run, tmp=self.tmp, file=self.tmp / "notes.txt",
                           folder=self.tmp / "mine", toml=self.tmp / "c.toml", png=self.tmp / "photo.png")


def _user_files(tmp: Path) -> dict[Path, str]:
    mine = tmp / "mine"
    mine.mkdir()
    files = {tmp / "notes.txt": USER_TEXT, mine / "thesis.tex": USER_TEXT, tmp / "photo.png": USER_TEXT}
    for p, text in files.items():
        p.write_text(text)
    (tmp / "c.toml").write_text(TOML)
    return files


# ------------------------------------------------------------------ runners


def _probe(message: str) -> None:
    """With TROUBLESHOOTING_PROBE=1, show each message (to write the table's "what you get")."""
    if os.environ.get("TROUBLESHOOTING_PROBE"):
        with open(os.environ["TROUBLESHOOTING_PROBE"], "a") as f:
            f.write(json.dumps([_CURRENT[0], message.strip()]) + "\n")


def cli(argv: list[str], pattern: str, code: int = 2):
    """The command fails with exit status ``code``, a message matching ``pattern`` and no traceback;
    the user's files are untouched."""

    def run(w: World, capsys):
        args = [w.path(a) for a in argv]
        try:
            status = main(args)
        except SystemExit as exit_:
            status = exit_.code
        err = capsys.readouterr().err
        _probe(err)
        assert status == code, err
        assert "Traceback" not in err
        assert re.search(pattern, err, re.S), err
        if code == 0:
            return
        first = err.strip().splitlines()[-1]
        assert first.startswith(("manifoldtrain", "usage")) or "error" in err

    return run


def cli_ok(argv: list[str], check: Callable | None = None):
    def run(w: World, capsys):
        assert main([w.path(a) for a in argv]) == 0
        capsys.readouterr()
        if check is not None:
            check(w)

    return run


def toml(text: str, error: type, pattern: str):
    def run(w: World, capsys):
        path = w.tmp / "bad.toml"
        path.write_text(text)
        with pytest.raises(error, match=pattern) as info:
            load_config(path)
        _probe(f"{type(info.value).__name__}: {info.value}")

    return run


def api(fn: Callable, error: type, pattern: str):
    def run(w: World, capsys):
        with pytest.raises(error, match=pattern) as info:
            fn(w)
        _probe(f"{type(info.value).__name__}: {info.value}")

    return run


def api_ok(fn: Callable):
    def run(w: World, capsys):
        fn(w)

    return run


# ------------------------------------------------------------------ API helpers

f32, f64 = torch.float32, torch.float64


def small_cube():
    return Cube(image_size=9, extent=0.5, sigma=0.08)


def model_for(w: World):
    return build_model(MLPConfig(hidden=(4,)), w.data.inputs.value, w.data.targets.value)


def jet_with_nan(w: World):
    value = w.data.inputs.value.clone()
    value[0, 0, 0] = math.nan
    return Jet(value, w.data.inputs.d1)


def damaged_cache(then: Callable):
    """Run ``then`` on a copy of the world's cache (at {tmp}/jets) holding one NaN in its
    target_d1.npy, sizes and headers intact (damage that opening a cache cannot see)."""

    def run(w: World, capsys):
        import shutil

        from source_helpers import overwrite

        shutil.copytree(w.cache, w.tmp / "jets")
        overwrite(w.tmp / "jets" / "target_d1.npy", (3, 0, 0))
        then(w, capsys)

    return run


def two_shapes(w: World):
    other = generate_jets(Cube(image_size=7, extent=0.5, sigma=0.08), 4, order=1, progress=False)
    Trainer(model_for(w), Objective.first_order(), w.data, other, TrainConfig(epochs=1, progress=False))


# ------------------------------------------------------------------ issue 25 helpers (plug-ins, messages, physics)


def _i25(name: str):
    import plugin_helpers

    return getattr(plugin_helpers, name)


def _i25_run(w: World, **kw):
    from manifoldtrain.config import DataConfig, ExperimentConfig
    from manifoldtrain.experiment import run_experiment

    base = dict(manifold=small_cube(), data=DataConfig(n_train=8, n_test=4), model=MLPConfig(hidden=(4,)),
                objective=Objective.first_order(), train=TrainConfig(epochs=1, batch_size=8, progress=False))
    return run_experiment(ExperimentConfig(**(base | kw)), w.tmp / "run")


def _i25_data(source: str):
    from manifoldtrain.config import DataConfig

    return DataConfig(n_train=8, n_test=4, source=source)


def _i25_resume_other_activation(w: World):
    _i25_run(w)
    _i25_run(w, model=MLPConfig(hidden=(4,), activation="sine"))


def _i25_trainer_wrong_input(w: World):
    model = build_model(MLPConfig(hidden=(4,)), torch.randn(3, 7, 7), torch.randn(3, 9))
    Trainer(model, Objective.first_order(), w.data, w.data, TrainConfig(epochs=1, progress=False)).fit()


def _i25_disk_full(then: Callable):
    """Run ``then`` with every file write of a shard or a checkpoint failing with ENOSPC."""

    def run(w: World, capsys):
        import builtins
        import errno
        from unittest import mock

        import manifoldtrain.checkpoints as checkpoints
        import manifoldtrain.data.shards as shards

        def full_save(state, path):
            raise OSError(errno.ENOSPC, "No space left on device")

        from plugin_helpers import full_disk_open

        with mock.patch.object(checkpoints.torch, "save", full_save), \
                mock.patch.object(shards, "open", full_disk_open(builtins.open), create=True):
            then(w, capsys)

    return run


def _i25_warns(fn: Callable, pattern: str):
    def run(w: World, capsys):
        with pytest.warns(UserWarning, match=pattern) as record:
            fn()
        _probe(f"UserWarning: {record[0].message}")

    return run


# ------------------------------------------------------------------ the table

CASES: list[Case] = [
    # --- the command line: commands and manifolds
    Case("no-command", "CLI", "manifoldtrain", "the following arguments are required: COMMAND", "CLEAR",
         cli([], r"required: COMMAND")),
    Case(
        "unknown-command", "CLI",
        "manifoldtrain frobnicate",
        "argument COMMAND: invalid choice: 'frobnicate' (choose from 'show', 'demo', 'generate', 'train', 'evaluate',"
        " 'export', 'robustness')",
        "CLEAR",
        cli(["frobnicate"], r"invalid choice: 'frobnicate'"),
    ),
    Case(
        "unknown-manifold", "CLI",
        "show sphere --out s.png",
        "argument MANIFOLD: invalid choice: 'sphere' (choose from 'cube', 'phase-retrieval')",
        "CLEAR",
        cli(["show", "sphere", "--out", "{tmp}/s.png"], r"invalid choice: 'sphere'"),
    ),
    Case(
        "plugin-no-module", "CLI",
        "show nosuch.module:Thing --out s.png",
        "kind: cannot import module 'nosuch.module' for manifold 'nosuch.module:Thing' (No module named 'nosuch'); the"
        " command line looks in the current folder and on PYTHONPATH (export PYTHONPATH=/its/folder)",
        "CLEAR",
        cli(["show", "nosuch.module:Thing", "--out", "{tmp}/s.png"], r"nosuch\.module"),
    ),
    Case(
        "option-abbreviation", "CLI",
        "robustness --manifold cube --width 64 --out r",
        "manifoldtrain: error: unrecognized arguments: --width 64",
        "CLEAR",
        cli(["robustness", "--manifold", "cube", "--width", "64", "--out", "{tmp}/r"],
            r"unrecognized arguments: --width 64"),
    ),
    Case(
        "plugin-no-class", "CLI",
        "generate manifoldtrain.manifolds:Sphere --n 2 --out j",
        "kind: module 'manifoldtrain.manifolds' has no 'Sphere' (for manifold 'manifoldtrain.manifolds:Sphere')",
        "CLEAR",
        cli(["generate", "manifoldtrain.manifolds:Sphere", "--n", "2", "--out", "{tmp}/j"], r"Sphere"),
    ),
    Case(
        "plugin-not-a-manifold", "CLI",
        "show math:pi --out s.png",
        "kind: 'math:pi' is not a subclass of Manifold (got 3.141592653589793)",
        "CLEAR",
        cli(["show", "math:pi", "--out", "{tmp}/s.png"], r"math:pi"),
    ),
    # --- show
    Case("show-no-out", "CLI", "show cube", "the following arguments are required: --out", "CLEAR",
         cli(["show", "cube"], r"required: --out")),
    Case("show-out-user-file", "CLI", "show cube --out photo.png  (a file of yours)",
         "--out: photo.png exists; choose another file, or pass --force to replace it", "CLEAR",
         cli(["show", "cube", "--out", "{png}", *CUBE], r"--out.*exists.*--force")),
    Case(
        "show-out-folder", "CLI",
        "show cube --out mine/  (a folder)",
        "--out: mine is a folder; give the name of an image file to write",
        "CLEAR",
        cli(["show", "cube", "--out", "{folder}", *CUBE], r"--out.*folder"),
    ),
    Case("show-out-force", "CLI", "show cube --out photo.png --force", "wrote photo.png (replaced, as asked)", "OK",
         cli_ok(["show", "cube", "--out", "{png}", "--force", *CUBE],
                lambda w: (w.tmp / "photo.png").read_bytes()[:4] == b"\x89PNG" or pytest.fail("not replaced"))),
    Case(
        "show-out-no-suffix", "CLI",
        "show cube --out picture.xyz",
        "--out: picture.xyz: cannot write images of format 'xyz'; end the name with one of .avif, .eps, .gif, .jpeg, "
        ".jpg, .pdf, .pgf, .png, .ps, .raw, ...",
        "CLEAR",
        cli(["show", "cube", "--out", "{tmp}/picture.xyz", *CUBE], r"--out.*xyz"),
    ),
    Case("show-seed-negative", "CLI", "show cube --seed -1 --out s.png", "seed: expected an int >= 0, got -1", "CLEAR",
         cli(["show", "cube", "--seed", "-1", "--out", "{tmp}/s.png", *CUBE], r"seed: expected an int >= 0")),
    Case(
        "show-sigma-negative", "CLI",
        "show cube --sigma -1 --out s.png",
        "sigma: expected a number > 0, got -1.0",
        "CLEAR",
        cli(["show", "cube", "--out", "{tmp}/s.png", "--sigma", "-1"], r"sigma: expected"),
    ),
    Case(
        "show-sigma-nan", "CLI",
        "show cube --sigma nan --out s.png",
        "sigma: expected a finite number, got nan",
        "CLEAR",
        cli(["show", "cube", "--out", "{tmp}/s.png", "--sigma", "nan"], r"sigma: expected"),
    ),
    Case(
        "show-image-size-zero", "CLI",
        "show cube --image-size 0 --out s.png",
        "--image-size: expected an int >= 2, got 0",
        "CLEAR",
        cli(["show", "cube", "--out", "{tmp}/s.png", "--image-size", "0"], r"--image-size: expected an int >= 2"),
    ),
    Case("show-image-size-text", "CLI", "show cube --image-size big --out s.png",
         "argument --image-size: invalid int value: 'big'", "CLEAR",
         cli(["show", "cube", "--out", "{tmp}/s.png", "--image-size", "big"], r"--image-size: invalid int value")),
    # --- generate
    Case("pr-grid-too-small", "CLI", "show phase-retrieval --grid-size 24 --out s.png",
         "--grid-size: expected at least twice object_size = 32 (the far field must oversample the object by 2 or more "
         "for the intensity to determine it), got 24", "CLEAR",
         cli(["show", "phase-retrieval", "--grid-size", "24", "--out", "{tmp}/s.png"], r"--grid-size: expected at least twice")),
    Case("pr-photons-negative", "CLI", "generate phase-retrieval --photons=-1e5 --n 4 --out j",
         "photons: expected a number > 0, got -100000.0", "CLEAR",
         cli(["generate", "phase-retrieval", "--photons=-1e5", "--n", "4", "--out", "{tmp}/j"], r"photons: expected a number > 0")),
    Case("pr-equal-widths", "TOML", '[manifold] kind = "phase-retrieval" widths = [0.2, 0.2]',
         "ValueError: widths: expected distinct widths (they tell the blobs apart; equal widths make the blobs' order ambiguous, ...)",
         "CLEAR",
         toml('[manifold]\nkind = "phase-retrieval"\nwidths = [0.2, 0.2]\n', ValueError, r"widths: expected distinct widths")),
    Case("generate-manifold-last", "CLI", "generate --n 10 --out j cube",
         "name the manifold first, then its options: manifoldtrain generate MANIFOLD --n ... (MANIFOLD: cube, "
         "phase-retrieval, or package.module:ClassName of your own)", "CLEAR",
         cli(["generate", "--n", "10", "--out", "{tmp}/j", "cube"], r"name the manifold first.*MANIFOLD: cube")),
    Case("generate-n-zero", "CLI", "generate cube --n 0 --out j", "n: expected an int >= 1, got 0", "CLEAR",
         cli(["generate", "cube", "--n", "0", "--out", "{tmp}/j"], r"n: expected an int >= 1")),
    Case("generate-n-negative", "CLI", "generate cube --n -5 --out j", "n: expected an int >= 1, got -5", "CLEAR",
         cli(["generate", "cube", "--n", "-5", "--out", "{tmp}/j"], r"n: expected an int >= 1")),
    Case("generate-n-text", "CLI", "generate cube --n ten --out j", "argument --n: invalid int value: 'ten'", "CLEAR",
         cli(["generate", "cube", "--n", "ten", "--out", "{tmp}/j"], r"--n: invalid int value")),
    Case("generate-out-user-file", "CLI", "generate cube --n 2 --out notes.txt  (a file of yours)",
         "--out: notes.txt is a file, not a jet cache; choose a new folder name", "CLEAR",
         cli(["generate", "cube", "--n", "2", "--out", "{file}", *CUBE], r"--out.*notes\.txt")),
    Case(
        "generate-out-user-folder", "CLI",
        "generate cube --n 2 --out mine/  (your folder)",
        "--out: mine is a folder of other files, not a jet cache, and would be replaced whole; choose a new folder "
        "name",
        "CLEAR",
        cli(["generate", "cube", "--n", "2", "--out", "{folder}", *CUBE], r"--out.*mine"),
    ),
    Case(
        "generate-order-3", "CLI",
        "generate cube --n 2 --order 3 --out j",
        "argument --order: invalid choice: 3 (choose from 0, 1, 2)",
        "CLEAR",
        cli(["generate", "cube", "--n", "2", "--order", "3", "--out", "{tmp}/j"], r"--order: invalid choice"),
    ),
    Case(
        "generate-dtype", "CLI",
        "generate cube --n 2 --dtype float16 --out j",
        "argument --dtype: invalid choice: 'float16' (choose from 'float32', 'float64')",
        "CLEAR",
        cli(["generate", "cube", "--n", "2", "--dtype", "float16", "--out", "{tmp}/j"], r"--dtype: invalid choice"),
    ),
    Case("generate-seed-negative", "CLI", "generate cube --n 2 --seed -1 --out j", "seed: expected an int >= 0, got -1",
         "CLEAR", cli(["generate", "cube", "--n", "2", "--seed", "-1", "--out", "{tmp}/j", "--no-progress", *CUBE],
                      r"seed: expected an int >= 0")),
    Case(
        "device-nonsense", "CLI",
        "generate cube --n 2 --device gpu0 --out j",
        "--device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu0'",
        "CLEAR",
        cli(["generate", "cube", "--n", "2", "--device", "gpu0", "--out", "{tmp}/j"], r"--device"),
    ),
    Case(
        "threads-zero", "CLI",
        "generate cube --n 2 --threads 0 --out j",
        "--threads: expected an int >= 1, got 0",
        "CLEAR",
        cli(["generate", "cube", "--n", "2", "--threads", "0", "--out", "{tmp}/j"], r"--threads: expected an int >= 1"),
    ),
    Case("threads-text", "CLI", "demo --threads many", "argument --threads: invalid int value: 'many'", "CLEAR",
         cli(["demo", "--threads", "many", "--out", "{tmp}/d"], r"--threads: invalid int value")),
    Case("generate-ok", "CLI", "generate cube --n 2 --out j --image-size 9", "wrote 2 samples of order 2 to j", "OK",
         cli_ok(["generate", "cube", "--n", "2", "--out", "{tmp}/j", "--no-progress", *CUBE],
                lambda w: len(load_jets(w.tmp / "j")) == 2 or pytest.fail("not 2 samples"))),
    # --- train
    Case(
        "train-config-missing", "CLI",
        "train --config missing.toml --out r",
        "--config missing.toml: path: no config file at missing.toml",
        "CLEAR",
        cli(["train", "--config", "{tmp}/missing.toml", "--out", "{tmp}/r"], r"no config file"),
    ),
    Case(
        "train-config-folder", "CLI",
        "train --config mine/ --out r",
        "--config mine: path: no config file at mine",
        "CLEAR",
        cli(["train", "--config", "{folder}", "--out", "{tmp}/r"], r"mine"),
    ),
    Case(
        "train-config-syntax", "CLI",
        "train --config notes.txt --out r  (not TOML)",
        "--config notes.txt: path: notes.txt is not valid TOML (Expected '=' after a key in a key/value pair (at line"
        " 1, column 5))",
        "CLEAR",
        cli(["train", "--config", "{file}", "--out", "{tmp}/r"], r"notes\.txt.*TOML"),
    ),
    Case(
        "train-config-binary", "CLI",
        "train --config photo.jpg  (a binary file)",
        "--config b.jpg: path: b.jpg is not valid TOML ('utf-8' codec can't decode byte 0xff in position 0: invalid "
        "start byte)",
        "CLEAR",
        lambda w, capsys: (w.tmp / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 binary") and
        cli(["train", "--config", "{tmp}/b.jpg", "--out", "{tmp}/r"], r"--config .*b\.jpg.*not valid TOML")(w, capsys),
    ),
    Case(
        "train-out-user-file", "CLI",
        "train --config c.toml --out notes.txt",
        "--out: notes.txt is a file, not a folder; choose a folder for the run's outputs",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{file}"], r"--out: .*notes\.txt is a file"),
    ),
    Case(
        "train-out-user-folder", "CLI",
        "train --config c.toml --out mine/",
        "--out: mine already holds files that are not a manifoldtrain output (thesis.tex); choose a new or empty "
        "folder, or pass --force to write beside ...",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{folder}"], r"--out: .*thesis\.tex.*--force"),
    ),
    Case(
        "train-data-missing", "CLI",
        "train --config c.toml --out r --data nowhere",
        "--data: no jet cache at nowhere: there is no such file or folder; pass a folder written by "
        "`manifoldtrain generate`",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--data", "{tmp}/nowhere"],
            r"--data: no jet cache at .*nowhere: there is no such file or folder"),
    ),
    Case(
        "train-data-damaged-value", "CLI",
        "train --config c.toml --out r --data jets  (a NaN inside a file, sizes intact)",
        "--data: jets/target_d1.npy holds NaN or infinite values in row 3 (sample 3 of the cache); caches are written "
        "with finite values only, so the file is damaged: write the cache again (`manifoldtrain generate`, or "
        "save_jets; a cache in a data.cache_dir: delete jets and the next run computes it anew)",
        "CLEAR",
        damaged_cache(cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--data", "{tmp}/jets"],
                          r"--data: \S*jets/target_d1\.npy holds NaN or infinite values in row 3 \(sample 3 of the "
                          r"cache\); .* the file is damaged: write the cache again")),
    ),
    Case(
        "train-data-user-folder", "CLI",
        "train --config c.toml --out r --data mine/",
        "--data: no complete jet cache at mine (missing meta.json)",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--data", "{folder}"],
            r"--data: no complete jet cache at .*mine \(missing meta.json\)"),
    ),
    Case(
        "train-data-cache-dir", "CLI",
        "train --config c.toml --out r --data jet-cache/  (a data.cache_dir)",
        "--data: no complete jet cache at jet-cache (missing meta.json); it holds 1 jet cache in subfolders "
        "(3f2a...), as a data.cache_dir does: pass one of them, e.g. jet-cache/3f2a...",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--data", "{cache}/.."],
            r"--data: .*it holds 1 jet cache in subfolders \(jets\), as a data.cache_dir does: pass one of them"),
    ),
    Case(
        "train-seed-negative", "CLI",
        "train --config c.toml --out r --seed -1",
        "--seed: expected an int >= 0, got -1",
        "CLEAR",
        cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--seed", "-1"], r"--seed: expected an int >= 0"),
    ),
    Case("train-no-out", "CLI", "train --config c.toml", "the following arguments are required: --out", "CLEAR",
         cli(["train", "--config", "{toml}"], r"required: --out")),
    # --- evaluate
    Case(
        "evaluate-run-missing", "CLI",
        "evaluate --run nowhere --data j",
        "--run nowhere: path: no run folder or checkpoint file at nowhere",
        "CLEAR",
        cli(["evaluate", "--run", "{tmp}/nowhere", "--data", "{cache}"], r"--run .*nowhere"),
    ),
    Case(
        "evaluate-data-missing", "CLI",
        "evaluate --run r --data nowhere",
        "--data: no jet cache at nowhere: there is no such file or folder; pass a folder written by "
        "`manifoldtrain generate`",
        "CLEAR",
        cli(["evaluate", "--run", "{run}", "--data", "{tmp}/nowhere"], r"--data: no jet cache at .*nowhere: there is"),
    ),
    Case(
        "evaluate-run-is-cache", "CLI",
        "evaluate --run j --data j  (a cache, not a run)",
        "--run jets: path: jets holds no checkpoint (checkpoint.pt); is it a run folder written by 'train'?",
        "CLEAR",
        cli(["evaluate", "--run", "{cache}", "--data", "{cache}"], r"--run "),
    ),
    Case(
        "evaluate-run-user-file", "CLI",
        "evaluate --run notes.txt --data j",
        "--run notes.txt: path: notes.txt is damaged or not a manifoldtrain checkpoint (IndexError); if you meant "
        "another file, check the path; if it is a run's damaged checkpoint, move it aside or start over",
        "CLEAR",
        cli(["evaluate", "--run", "{file}", "--data", "{cache}"], r"--run .*notes\.txt"),
    ),
    Case("evaluate-json-user-file", "CLI", "evaluate --run r --data j --json notes.txt",
         "--json: notes.txt exists; choose another file, or pass --force to replace it", "CLEAR",
         cli(["evaluate", "--run", "{run}", "--data", "{cache}", "--json", "{file}"], r"--json: .*exists.*--force")),
    Case(
        "evaluate-json-folder", "CLI",
        "evaluate --run r --data j --json mine/",
        "--json: mine is a folder; give the name of a JSON file to write",
        "CLEAR",
        cli(["evaluate", "--run", "{run}", "--data", "{cache}", "--json", "{folder}"], r"--json: .*folder"),
    ),
    Case("evaluate-json-force", "CLI", "evaluate --run r --data j --json m.json --force  (m.json: an earlier one)",
         "replaced, as asked", "OK",
         cli_ok(["evaluate", "--run", "{run}", "--data", "{cache}", "--json", "{file}", "--force"],
                lambda w: '"rmse"' in (w.tmp / "notes.txt").read_text() or pytest.fail("not replaced"))),
    Case("evaluate-json-run-file", "CLI", "evaluate --run r --data j --json r/results.json --force",
         "--json: r/results.json is a file of --run r, which this command reads and does not write; choose "
         "another file", "CLEAR",
         cli(["evaluate", "--run", "{run}", "--data", "{cache}", "--json", "{run}/results.json", "--force"],
             r"--json: .*results\.json is a file of --run")),
    Case(
        "evaluate-other-shape", "CLI",
        "evaluate --run r --data j7  (a cache of 7x7 images)",
        "--run run: test: its jets come from another manifold or settings than the run's "
        "(manifold.settings.image_size: 7 in the test data, 9 in the run)",
        "CLEAR",
        lambda w, capsys: cli(["evaluate", "--run", "{run}", "--data", str(_cache7(w))],
            r"another manifold.*image_size: 7")(w, capsys),
    ),
    # --- export
    Case(
        "export-run-missing", "CLI",
        "export --run nowhere --out m.pt2",
        "--run nowhere: path: no run folder or checkpoint file at nowhere",
        "CLEAR",
        cli(["export", "--run", "{tmp}/nowhere", "--out", "{tmp}/m.pt2"], r"--run .*nowhere"),
    ),
    Case(
        "export-out-user-file", "CLI",
        "export --run r --out notes.txt",
        "--out: notes.txt exists and is not a manifoldtrain export; choose another name, or pass --force to replace it",
        "CLEAR",
        cli(["export", "--run", "{run}", "--out", "{file}"], r"--out: .*notes\.txt.*--force"),
    ),
    Case(
        "export-out-folder", "CLI",
        "export --run r --out mine/",
        "--out: mine is a folder; give the name of the file to write (e.g. model.pt2)",
        "CLEAR",
        cli(["export", "--run", "{run}", "--out", "{folder}"], r"--out: .*mine"),
    ),
    Case(
        "export-run-user-file", "CLI",
        "export --run notes.txt --out m.pt2",
        "--run notes.txt: path: notes.txt is damaged or not a manifoldtrain checkpoint (IndexError); if you meant "
        "another file, check the path; if it is a run's damaged checkpoint, move it aside or start over",
        "CLEAR",
        cli(["export", "--run", "{file}", "--out", "{tmp}/m.pt2"], r"--run .*notes\.txt"),
    ),
    # --- robustness
    Case(
        "robustness-budgets-negative", "CLI",
        "robustness --run r --budgets -1",
        "--budgets: expected finite numbers >= 0, got -1.0",
        "CLEAR",
        cli(["robustness", "--run", "{run}", "--budgets", "-1"], r"budgets"),
    ),
    Case(
        "robustness-noise-nan", "CLI",
        "robustness --run r --noise-levels nan",
        "--noise-levels: expected finite numbers >= 0, got nan",
        "CLEAR",
        cli(["robustness", "--run", "{run}", "--noise-levels", "nan"], r"--noise-levels: expected finite"),
    ),
    Case(
        "robustness-eval-samples-zero", "CLI",
        "robustness --run r --eval-samples 0",
        "--eval-samples: expected an int >= 1, got 0",
        "CLEAR",
        cli(["robustness", "--run", "{run}", "--eval-samples", "0"], r"--eval-samples: expected an int"),
    ),
    Case("robustness-json-user-file", "CLI", "robustness --run r --json notes.txt",
         "--json: notes.txt exists; choose another file, or pass --force to replace it", "CLEAR",
         cli(["robustness", "--run", "{run}", "--json", "{file}"], r"--json: .*exists.*--force")),
    Case(
        "robustness-json-without-run", "CLI",
        "robustness --json out.json",
        "--json: only with --run (the comparison writes OUT/results.json)",
        "CLEAR",
        cli(["robustness", "--json", "{tmp}/out.json", "--out", "{tmp}/rb"], r"--json: only with --run"),
    ),
    Case(
        "robustness-out-user-file", "CLI",
        "robustness --out notes.txt",
        "--out: notes.txt is a file, not a folder; choose a folder for the robustness's outputs",
        "CLEAR",
        cli(["robustness", "--out", "{file}"], r"--out: .*notes\.txt is a file"),
    ),
    Case(
        "robustness-out-user-folder", "CLI",
        "robustness --out mine/",
        "--out: mine already holds files that are not a manifoldtrain output (thesis.tex); choose a new or empty "
        "folder, or pass --force to write beside ...",
        "CLEAR",
        cli(["robustness", "--out", "{folder}"], r"--out: .*thesis\.tex.*--force"),
    ),
    Case(
        "robustness-run-missing", "CLI",
        "robustness --run nowhere",
        "--run nowhere: run: nowhere is not a trained run folder (no checkpoint.pt and config.toml); train one with "
        "`manifoldtrain train --out DIR`",
        "CLEAR",
        cli(["robustness", "--run", "{tmp}/nowhere"], r"--run .*nowhere"),
    ),
    # --- demo
    Case(
        "demo-out-user-file", "CLI",
        "demo --out notes.txt",
        "--out: notes.txt is a file, not a folder; choose a folder for the demo's outputs",
        "CLEAR",
        cli(["demo", "--out", "{file}"], r"--out: .*notes\.txt is a file"),
    ),
    Case(
        "demo-out-user-folder", "CLI",
        "demo --out mine/",
        "--out: mine already holds files that are not a manifoldtrain output (thesis.tex); choose a new or empty "
        "folder, or pass --force to write beside ...",
        "CLEAR",
        cli(["demo", "--out", "{folder}"], r"--out: .*thesis\.tex.*--force"),
    ),
    Case(
        "demo-seconds-negative", "CLI",
        "demo --seconds-per-run -1",
        "--seconds-per-run: expected a number > 0, got -1.0",
        "CLEAR",
        cli(["demo", "--seconds-per-run", "-1", "--out", "{tmp}/d"], r"--seconds-per-run: expected a number > 0"),
    ),
    Case(
        "demo-seconds-nan", "CLI",
        "demo --seconds-per-run nan",
        "--seconds-per-run: expected a finite number, got nan",
        "CLEAR",
        cli(["demo", "--seconds-per-run", "nan", "--out", "{tmp}/d"], r"--seconds-per-run: expected a finite"),
    ),
    Case(
        "demo-objective-unknown", "CLI",
        "demo --objectives value third",
        "objectives: expected names among ['first', 'second', 'value'], got ('value', 'third')",
        "CLEAR",
        cli(["demo", "--objectives", "value", "third", "--out", "{tmp}/d"], r"objectives"),
    ),
    # --- TOML configs
    Case(
        "toml-via-train", "CLI",
        "train --config c.toml  (with n_train = -5)",
        "--config neg.toml: data.n_train: expected an int >= 2, got -5",
        "CLEAR",
        lambda w, capsys: (w.tmp / "neg.toml").write_text("[data]\nn_train = -5\n") and
        cli(["train", "--config", "{tmp}/neg.toml", "--out", "{tmp}/r"],
            r"--config .*neg\.toml: data\.n_train: expected an int >= 2")(w, capsys),
    ),
    Case(
        "toml-unknown-table", "TOML",
        "[optimiser]",
        "ValueError: config: unknown table(s) or top-level key(s) ['optimiser']; expected tables ['data', "
        "'manifold', 'model', 'objective', 'train'] and top-level keys ['device', 'model_seed']",
        "CLEAR",
        toml("[optimiser]\nlr = 1\n", ValueError, r"optimiser"),
    ),
    Case(
        "toml-unknown-key", "TOML",
        "[data] n_trian = 10",
        "ValueError: data: unknown key(s) ['n_trian']; expected some of ['cache_dir', 'dtype', 'n_test', 'n_train', "
        "'path', 'seed', 'split_seed', 'test_order']",
        "CLEAR",
        toml("[data]\nn_trian = 10\n", (TypeError, ValueError), r"n_trian"),
    ),
    Case(
        "toml-wrong-type", "TOML",
        "[data] n_train = \"many\"",
        "TypeError: data.n_train: expected an integer, got the string 'many'",
        "CLEAR",
        toml('[data]\nn_train = "many"\n', (TypeError, ValueError), r"n_train"),
    ),
    Case(
        "toml-string-for-bool", "TOML",
        "[train] progress = \"false\"",
        "TypeError: train.progress: expected a boolean (true or false, without quotes), got the string 'false'; write"
        " progress = false",
        "CLEAR",
        toml('[train]\nprogress = "false"\n', (TypeError, ValueError), r"progress"),
    ),
    Case(
        "toml-negative-size", "TOML",
        "[data] n_train = -5",
        "ValueError: data.n_train: expected an int >= 2, got -5",
        "CLEAR",
        toml("[data]\nn_train = -5\n", ValueError, r"n_train: expected an int >= 2"),
    ),
    Case(
        "toml-hidden-zero", "TOML",
        "[model] hidden = [0]",
        "ValueError: model.hidden: expected a non-empty list of positive ints, got [0]",
        "CLEAR",
        toml('[model]\nkind = "mlp"\nhidden = [0]\n', (TypeError, ValueError), r"hidden"),
    ),
    Case(
        "toml-epochs-zero", "TOML",
        "[train] epochs = 0",
        "ValueError: train.epochs: expected an int >= 1, got 0",
        "CLEAR",
        toml("[train]\nepochs = 0\n", ValueError, r"epochs: expected an int >= 1"),
    ),
    Case(
        "toml-dtype", "TOML",
        "[data] dtype = \"float16\"",
        "ValueError: data.dtype: expected one of ['float32', 'float64'], got 'float16'",
        "CLEAR",
        toml('[data]\ndtype = "float16"\n', (TypeError, ValueError), r"dtype"),
    ),
    Case(
        "toml-no-terms", "TOML",
        "[objective] terms = []",
        "ValueError: objective: expected a non-empty list of [[objective.terms]] tables and nothing else",
        "CLEAR",
        toml("[objective]\nterms = []\n", (TypeError, ValueError), r"term"),
    ),
    Case(
        "toml-unknown-term", "TOML",
        "[[objective.terms]] kind = \"third\"",
        "ValueError: objective.terms[0].kind: unknown term 'third'; expected one of ['derivative', 'invariance-"
        "adversarial', 'invariance-jacobian', 'invariance-noise', ...",
        "CLEAR",
        toml('[[objective.terms]]\nkind = "third"\n', (TypeError, ValueError), r"third"),
    ),
    Case(
        "toml-term-import", "TOML",
        "[[objective.terms]] kind = \"nosuch.mod:X\"",
        "ValueError: objective.terms[0].kind: cannot import module 'nosuch.mod' for term 'nosuch.mod:X' (No module "
        "named 'nosuch'); the command line looks in the current folder and on PYTHONPATH (export "
        "PYTHONPATH=/its/folder)",
        "CLEAR",
        toml('[[objective.terms]]\nkind = "nosuch.mod:X"\n', (TypeError, ValueError, ImportError), r"nosuch\.mod"),
    ),
    Case(
        "toml-weight-negative", "TOML",
        "[[objective.terms]] kind = \"value\", weight = -1",
        "ValueError: objective.terms[0].weight: expected a number >= 0, got -1.0",
        "CLEAR",
        toml('[[objective.terms]]\nkind = "value"\nweight = -1.0\n', ValueError, r"weight"),
    ),
    Case(
        "toml-weight-nan", "TOML",
        "[[objective.terms]] kind = \"value\", weight = nan",
        "ValueError: objective.terms[0].weight: expected a finite number, got nan",
        "CLEAR",
        toml('[[objective.terms]]\nkind = "value"\nweight = nan\n', ValueError, r"weight"),
    ),
    Case(
        "toml-term-order-3", "TOML",
        "[[objective.terms]] kind = \"derivative\", order = 3",
        "ValueError: objective.terms[0].order: expected an int <= 2, got 3",
        "CLEAR",
        toml('[[objective.terms]]\nkind = "derivative"\norder = 3\n', ValueError, r"order"),
    ),
    Case(
        "toml-unknown-manifold", "TOML",
        "[manifold] kind = \"sphere\"",
        "ValueError: manifold.kind: unknown manifold 'sphere'; expected one of ['cube'] or 'package.module:ClassName'",
        "CLEAR",
        toml('[manifold]\nkind = "sphere"\n', (TypeError, ValueError), r"sphere"),
    ),
    Case(
        "toml-unknown-model", "TOML",
        "[model] kind = \"transformer\"",
        "ValueError: model.kind: unknown model 'transformer'; expected one of ['convnet', 'mlp'] or "
        "'package.module:ClassName'",
        "CLEAR",
        toml('[model]\nkind = "transformer"\n', (TypeError, ValueError), r"transformer"),
    ),
    # --- the Python API
    Case(
        "cube-image-size-zero", "API",
        "Cube(image_size=0)",
        "ValueError: image_size: expected an int >= 2, got 0",
        "CLEAR",
        api(lambda w: Cube(image_size=0), ValueError, r"image_size: expected an int >= 2"),
    ),
    Case(
        "cube-image-size-str", "API",
        "Cube(image_size=\"9\")",
        "TypeError: image_size: expected an int, got str",
        "CLEAR",
        api(lambda w: Cube(image_size="9"), TypeError, r"image_size"),
    ),
    Case(
        "cube-sigma-nan", "API",
        "Cube(sigma=float(\"nan\"))",
        "ValueError: sigma: expected a finite number, got nan",
        "CLEAR",
        api(lambda w: Cube(sigma=math.nan), ValueError, r"sigma"),
    ),
    Case(
        "cube-face-colors", "API",
        "Cube(face_colors=(1.0,))",
        "ValueError: face_colors: expected 6 numbers, got 1",
        "CLEAR",
        api(lambda w: Cube(face_colors=(1.0,)), (TypeError, ValueError), r"face_colors"),
    ),
    Case(
        "jets-wrong-shape", "API",
        "Cube().jets(torch.zeros(2, 5))",
        "ValueError: points: expected shape [*, 6], got [2, 5]",
        "CLEAR",
        api(lambda w: small_cube().jets(torch.zeros(2, 5, dtype=f64)), ValueError, r"points"),
    ),
    Case(
        "jets-int-dtype", "API",
        "Cube().jets(torch.zeros(2, 6, dtype=torch.int64))",
        "TypeError: points: expected dtype float32 or float64, got torch.int64",
        "CLEAR",
        api(lambda w: small_cube().jets(torch.zeros(2, 6, dtype=torch.int64)), (TypeError, ValueError), r"points"),
    ),
    Case(
        "jets-nan", "API",
        "Cube().jets(points with a NaN)",
        "ValueError: points: expected finite values, found 1 NaN or infinite entries",
        "CLEAR",
        api(lambda w: small_cube().jets(torch.tensor([[math.nan, 0, 0, 0, 0, 0.0]], dtype=f64)),
            ValueError, r"points.*finite"),
    ),
    Case(
        "jets-order-3", "API",
        "Cube().jets(points, order=3)",
        "ValueError: order: expected an int <= 2, got 3",
        "CLEAR",
        api(lambda w: small_cube().jets(torch.zeros(1, 6, dtype=f64), order=3), ValueError, r"order"),
    ),
    Case(
        "jet-mismatched-n", "API",
        "Jet(value [3, 9, 9], d1 [2, 6, 9, 9])",
        "ValueError: d1: expected shape [3, d, 9, 9] to match value [3, 9, 9], got [2, 6, 9, 9]",
        "CLEAR",
        api(lambda w: Jet(torch.zeros(3, 9, 9), torch.zeros(2, 6, 9, 9)), ValueError, r"d1"),
    ),
    Case(
        "jet-mismatched-d2", "API",
        "Jet(value [3, 9, 9], d1 [3, 6, 9, 9], d2 [3, 5, 9, 9])",
        "ValueError: d2: expected shape [3, 21, 9, 9], got [3, 5, 9, 9]",
        "CLEAR",
        api(lambda w: Jet(torch.zeros(3, 9, 9), torch.zeros(3, 6, 9, 9), torch.zeros(3, 5, 9, 9)), ValueError, r"d2"),
    ),
    Case(
        "jet-mixed-dtype", "API",
        "Jet(value float32, d1 float64)",
        "ValueError: d1: expected dtype torch.float32 on cpu like value, got torch.float64 on cpu",
        "CLEAR",
        api(lambda w: Jet(torch.zeros(3, 9, 9), torch.zeros(3, 6, 9, 9, dtype=f64)), (TypeError, ValueError), r"d1"),
    ),
    Case(
        "network-jet-dtype", "API",
        "network_jet(float32 model, float64 jet)",
        "TypeError: input_jet.value: the model's parameters are torch.float32 on cpu, the inputs torch.float64 on "
        "cpu; move one to the other ...",
        "CLEAR",
        api(lambda w: network_jet(model_for(w), w.data.inputs.to(dtype=f64)), (TypeError, ValueError), r"input_jet"),
    ),
    Case(
        "network-jet-shape", "API",
        "network_jet(model for 9x9, jet of 7x7 images)",
        "ValueError: input_jet.value: expected inputs [n, 9, 9] for the model (its layer model.0 (Affine) takes "
        "them), got [2, 7, 7]; pass inputs of the ...",
        "CLEAR",
        api(lambda w: network_jet(model_for(w), Jet(torch.zeros(2, 7, 7))), ValueError, r"input_jet"),
    ),
    Case(
        "network-jet-nan", "API",
        "network_jet(model, jet with a NaN)",
        "ValueError: input_jet.value: expected finite values, found 1 NaN or infinite entries; check the data (e.g. a"
        " damaged jet cache: regenerate it) ...",
        "CLEAR",
        api(lambda w: network_jet(model_for(w), jet_with_nan(w)), ValueError, r"input_jet\.value: expected finite"),
    ),
    Case(
        "objective-no-terms", "API",
        "Objective([])",
        "ValueError: terms: expected a non-empty tuple of terms, got ()",
        "CLEAR",
        api(lambda w: Objective([]), (TypeError, ValueError), r"term"),
    ),
    Case(
        "value-weight-negative", "API",
        "ValueTerm(weight=-1)",
        "ValueError: weight: expected a number >= 0, got -1.0",
        "CLEAR",
        api(lambda w: ValueTerm(weight=-1.0), ValueError, r"weight"),
    ),
    Case(
        "derivative-order-3", "API",
        "DerivativeTerm(order=3)",
        "ValueError: order: expected an int <= 2, got 3",
        "CLEAR",
        api(lambda w: DerivativeTerm(order=3), ValueError, r"order"),
    ),
    Case(
        "objective-not-terms", "API",
        "Objective([\"value\"])",
        "TypeError: terms: expected Term instances (manifoldtrain.objectives.Term), got str",
        "CLEAR",
        api(lambda w: Objective(["value"]), TypeError, r"str"),
    ),
    Case(
        "trainer-mismatched-data", "API",
        "Trainer(model, objective, train 9x9, test 7x7)",
        "ValueError: test: its inputs have shape [7, 7], the training data [9, 9]",
        "CLEAR",
        api(two_shapes, ValueError, r"test"),
    ),
    Case("trainer-order-too-low", "API", "Trainer(model, Objective.second_order(), train of order 1)",
         "ValueError: train: expected jets of order >= 2, got order 1", "CLEAR",
         api(lambda w: Trainer(model_for(w), Objective.second_order(), w.data), ValueError, r"train.*order")),
    Case(
        "trainer-not-a-model", "API",
        "Trainer(\"mlp\", objective, train)",
        "TypeError: model: expected an nn.Module, got str",
        "CLEAR",
        api(lambda w: Trainer("mlp", Objective.first_order(), w.data), TypeError, r"model: expected an nn\.Module"),
    ),
    Case(
        "lossscales-mismatched", "API",
        "LossScales.from_data(inputs of n=8, targets of n=4)",
        "ValueError: targets: expected the jets of the same 8 samples and 6 coordinates as inputs, got 4 samples and "
        "6 coordinates",
        "CLEAR",
        api(lambda w: LossScales.from_data(w.data.inputs, w.data.targets[:4]), ValueError, r"targets"),
    ),
    Case(
        "lossscales-negative", "API",
        "LossScales(coordinate=(-1.0,), energy=(1.0, 1.0))",
        "ValueError: coordinate[0]: expected a number > 0, got -1.0",
        "CLEAR",
        api(lambda w: LossScales(coordinate=(-1.0,), energy=(1.0, 1.0)),
            ValueError, r"coordinate\[0\]: expected a number > 0"),
    ),
    Case(
        "lossscales-nan", "API",
        "LossScales(coordinate=(1.0,), energy=(nan, 1.0))",
        "ValueError: energy[0]: expected a finite number, got nan",
        "CLEAR",
        api(lambda w: LossScales(coordinate=(1.0,), energy=(math.nan, 1.0)),
            ValueError, r"energy\[0\]: expected a finite"),
    ),
    Case(
        "generate-jets-n-zero", "API",
        "generate_jets(Cube(), 0)",
        "ValueError: n: expected an int >= 1, got 0",
        "CLEAR",
        api(lambda w: generate_jets(small_cube(), 0, progress=False), ValueError, r"n: expected an int >= 1"),
    ),
    Case(
        "load-jets-user-folder", "API",
        "load_jets(\"mine/\")  (not a cache)",
        "FileNotFoundError: path: no complete jet cache at mine (missing meta.json)",
        "CLEAR",
        api(lambda w: load_jets(w.tmp / "mine"), (FileNotFoundError, ValueError), r"jet cache"),
    ),
    Case(
        "save-jets-user-folder", "API",
        "save_jets(data, \"mine/\")",
        "FileExistsError: path: mine is a folder of other files, not a jet cache, and would be replaced whole; choose"
        " a new folder name",
        "CLEAR",
        api(lambda w: save_jets(w.data, w.tmp / "mine"), (FileExistsError, ValueError), r"mine"),
    ),
    Case(
        "exact-oracle-shape", "API",
        "exact_oracle(cube, points, perturbed of the wrong shape)",
        "ValueError: perturbed: expected shape [8, 9, 9], got [8, 7, 7]",
        "CLEAR",
        api(lambda w: exact_oracle(small_cube(), w.data.points, torch.zeros(len(w.data), 7, 7)),
            ValueError, r"perturbed"),
    ),
    Case(
        "exact-oracle-nan", "API",
        "exact_oracle(cube, points, perturbed with a NaN)",
        "ValueError: perturbed: expected finite values, found 1 NaN or infinite entries",
        "CLEAR",
        api(lambda w: exact_oracle(small_cube(), w.data.points, jet_with_nan(w).value), ValueError, r"perturbed"),
    ),
    Case(
        "exact-oracle-max-iter", "API",
        "exact_oracle(..., max_iter=0)",
        "ValueError: max_iter: expected an int >= 1, got 0",
        "CLEAR",
        api(lambda w: exact_oracle(small_cube(), w.data.points, w.data.inputs.value, max_iter=0),
            ValueError, r"max_iter"),
    ),
    Case(
        "taylor-oracle-order", "API",
        "taylor_oracle(inputs, targets, delta, order=3)",
        "ValueError: order: expected an int <= 2, got 3",
        "CLEAR",
        api(lambda w: taylor_oracle(w.data.inputs, w.data.targets, w.data.inputs.value, order=3), ValueError, r"order"),
    ),
    Case(
        "taylor-oracle-shape", "API",
        "taylor_oracle(inputs, targets, delta of the wrong shape)",
        "ValueError: delta: expected shape [8, 9, 9], got [3, 9, 9]",
        "CLEAR",
        api(lambda w: taylor_oracle(w.data.inputs, w.data.targets, torch.zeros(3, 9, 9)), ValueError, r"delta"),
    ),
    Case(
        "evaluate-robustness-levels", "API",
        "evaluate_robustness(model, cube, data, noise_levels=(-1,))",
        "ValueError: noise_levels: expected finite numbers >= 0, got -1.0",
        "CLEAR",
        api(lambda w: evaluate_robustness(model_for(w), small_cube(), w.data, noise_levels=(-1.0,)),
            ValueError, r"noise_levels"),
    ),
    Case(
        "evaluate-robustness-budgets", "API",
        "evaluate_robustness(model, cube, data, budgets=(nan,))",
        "ValueError: budgets: expected finite numbers >= 0, got nan",
        "CLEAR",
        api(lambda w: evaluate_robustness(model_for(w), small_cube(), w.data, budgets=(math.nan,)),
            ValueError, r"budgets"),
    ),
    Case(
        "oracle-term-strength", "API",
        "OracleTerm(strength=-1)",
        "ValueError: strength: expected a number > 0, got -1.0",
        "CLEAR",
        api(lambda w: OracleTerm(strength=-1.0), ValueError, r"strength"),
    ),
    Case(
        "oracle-term-directions", "API",
        "OracleTerm(strength=0.1, directions=0)",
        "ValueError: directions: expected an int >= 1, got 0",
        "CLEAR",
        api(lambda w: OracleTerm(strength=0.1, directions=0), ValueError, r"directions"),
    ),
    Case(
        "noise-term-strength-nan", "API",
        "NoiseInvarianceTerm(strength=nan)",
        "ValueError: strength: expected a finite number, got nan",
        "CLEAR",
        api(lambda w: NoiseInvarianceTerm(strength=math.nan), ValueError, r"strength"),
    ),
    # --- issue 25: manifold settings on demo and robustness ---
    Case(
        "robustness-run-comparison-options", "CLI",
        "robustness --run r --n-train 50 --widths 8 --sigma 0.05",
        "--n-train, --widths, --sigma: only without --run: they set up the comparison's own runs, while --run "
        "scores r on its own manifold, data and network (with --run, these apply: --noise-levels, ...)",
        "CLEAR",
        cli(["robustness", "--run", "{run}", "--n-train", "50", "--widths", "8", "--sigma", "0.05"],
            r"--n-train, --widths, --sigma: only without --run"),
    ),
    Case(
        "demo-manifold-setting", "CLI",
        "demo --manifold cube --sigma -1 --out d",
        "manifoldtrain demo: error: --sigma: expected a number > 0, got -1.0",
        "CLEAR",
        cli(["demo", "--manifold", "cube", "--sigma", "-1", "--out", "{tmp}/d"], r"demo: error: --sigma: expected a number > 0"),
    ),
    Case(
        "robustness-manifold-unknown", "CLI",
        "robustness --manifold nope:Blob --out r",
        "manifoldtrain robustness: error: --manifold: cannot import module 'nope' for manifold 'nope:Blob' "
        "(No module named 'nope'); the command line looks in the current folder and on PYTHONPATH (...)",
        "CLEAR",
        cli(["robustness", "--manifold", "nope:Blob", "--out", "{tmp}/r"], r"robustness: error: --manifold: cannot import"),
    ),
    # --- issue 25: output folder safety, exports ---
    Case(
        "out-in-use", "CLI",
        "train --config c.toml --out run2 (while another train writes into run2)",
        "manifoldtrain train: error: --out: run2 is in use by another manifoldtrain command (process 4242 on "
        "host (its command line, since when)); wait for it to finish, or choose another folder (two commands writing "
        "into one folder would mix their files)",
        "CLEAR",
        lambda w, capsys: _while_locked(w.tmp / "run2", w.tmp / "run2" / ".manifoldtrain.lock", cli(
            ["train", "--config", "{toml}", "--out", "{tmp}/run2"],
            r"--out: .*run2 is in use by another manifoldtrain command \(process 4242 on host"), w, capsys),
    ),
    Case(
        "generate-out-in-use", "CLI",
        "generate cube --n 4 --out jets (while another generate writes jets)",
        "manifoldtrain generate: error: --out: jets is in use by another manifoldtrain command (process 4242 on "
        "host (its command line, since when)); wait for it to finish, or choose another folder (two commands writing "
        "into one folder would mix their files)",
        "CLEAR",
        lambda w, capsys: _while_locked(w.tmp, w.tmp / ".jets.lock", cli(
            ["generate", "cube", "--n", "4", "--out", "{tmp}/jets", *CUBE],
            r"--out: .*jets is in use by another manifoldtrain command \(process 4242"), w, capsys),
    ),
    Case(
        "out-lock-of-a-killed-run", "CLI",
        "train --config c.toml --out run2 (after a train into run2 was killed)",
        "runs, after a UserWarning: --out: run2 was locked by process 4242 on host (its command line), which no "
        "longer runs (it was interrupted or killed); taking over its lock and removing the temporary files it left",
        "OK",
        lambda w, capsys: _after_a_killed_run(w, capsys),
    ),
    Case(
        "export-float64-input", "API",
        'torch.export.load("model.pt2").module()(x.double()) (a float32 model)',
        "RuntimeError: Tensor dtype mismatch! Expected: Float, Got: double (convert with x.float(); export_info "
        "gives the dtype, shapes, manifold and output names)",
        "CLEAR",
        api(lambda w: _export_of(w)(w.data.inputs.value.double()), RuntimeError,
            r"Tensor dtype mismatch! Expected: Float, Got: double"),
    ),
    # --- issue 25: multi-channel inputs and per-output metrics ---
    Case(
        "manifold-target-names-count", "CLI",
        "train --config c.toml  (a manifold of yours, 3 outputs, ``target_names = (\"x\", \"y\")``)",
        "ValueError: TwoNamesSphere.target_names: expected 3 non-empty strings, got ['x', 'y']  (before any work)",
        "CLEAR",
        lambda w, capsys: _refused_before_work(
            w, capsys, 'kind = "toy_manifolds:TwoNamesSphere"',
            r"TwoNamesSphere\.target_names: expected 3 non-empty strings, got \['x', 'y'\]"),
    ),
    Case(
        "evaluate-output-names", "API",
        "evaluate(model, data, output_names=(\"a\", \"b\"))  (9 outputs)",
        "ValueError: output_names: expected 9 non-empty strings, got ['a', 'b']",
        "CLEAR",
        api(lambda w: evaluate(model_for(w), w.data, output_names=("a", "b")), ValueError,
            r"output_names: expected 9 non-empty strings"),
    ),
    # --- issue 25: plug-in contracts, messages, physics settings ---
    Case(
        "plugin-manifold-wrong-target", "CLI",
        "generate my:Blob --n 2 --out j  (declares target_shape (3,), gives 2 coordinates)",
        "MANIFOLD: plugin_helpers:WrongTarget breaks the Manifold contract: target(torch.float32): expected shape "
        "[2, 3], got [2, 2]; check it with manifoldtrain.testing.check_manifold (nothing written)",
        "CLEAR",
        cli(["generate", "plugin_helpers:WrongTarget", "--n", "2", "--out", "{tmp}/j", "--no-progress"],
            r"MANIFOLD: plugin_helpers:WrongTarget breaks the Manifold contract: target"),
    ),
    Case(
        "plugin-manifold-wrong-coordinates", "API",
        "run_experiment(config with a manifold whose jets have 3 coordinate rows for param_dim 2, out)",
        "ValueError: manifold: plugin_helpers:WrongCoords breaks the Manifold contract: jets(order=1) input[1] "
        "(torch.float32): expected shape [2, 2, 5, 5], got [2, 3, 5, 5]; ... (before any data)",
        "CLEAR",
        api(lambda w: _i25_run(w, manifold=_i25("WrongCoords")(size=5)), ValueError,
            r"manifold: plugin_helpers:WrongCoords breaks the Manifold contract: jets\(order=1\)"),
    ),
    Case(
        "plugin-model-wrong-outputs", "API",
        "build_model(MyNet(), inputs, targets of 9 coordinates)  (its layers end in 1 output)",
        "ValueError: config: the network that OneOutput.layers(input_shape=(9, 9), n_outputs=9) built gives outputs [1] "
        "per sample; expected [9] (one per target coordinate: end with a layer of n_outputs outputs)",
        "CLEAR",
        api(lambda w: build_model(_i25("OneOutput")(), w.data.inputs.value, w.data.targets.value), ValueError,
            r"config: the network that OneOutput.* gives outputs \[1\] per sample; expected \[9\]"),
    ),
    Case(
        "plugin-model-wrong-inputs", "API",
        "run_experiment(config whose model's first layer takes 50 inputs, images 5x5, out)",
        "ValueError: model: the network that FixedInput.layers(input_shape=(5, 5), n_outputs=2) built cannot take "
        "inputs [n, 5, 5] (mat1 and mat2 shapes cannot be multiplied ...); build its first layer for input_shape "
        "(before any data)",
        "CLEAR",
        api(lambda w: _i25_run(w, manifold=_i25("Blob")(size=5), model=_i25("FixedInput")()), ValueError,
            r"model: the network that FixedInput.* cannot take inputs \[n, 5, 5\]"),
    ),
    Case(
        "plugin-activation-wrong-derivatives", "TOML",
        '[model] activation = "my:Tanh"  (its second derivative has the wrong sign)',
        "ValueError: model.activation: 'plugin_helpers:WrongTanh': its closed-form derivatives(v) disagree with its "
        "forward and that function's finite differences on [-6, 6]: f'' off by 1.54 (largest 0.77); derivative "
        "training would fit wrong targets. Fix derivatives(v) ...",
        "CLEAR",
        toml('[model]\nkind = "mlp"\nactivation = "plugin_helpers:WrongTanh"\n', ValueError,
             r"model.activation: 'plugin_helpers:WrongTanh': its closed-form derivatives\(v\) disagree.*f'' off by"),
    ),
    Case(
        "plugin-term-loss-not-scalar", "API",
        "run_experiment(config whose term's loss returns [n, 2], out)",
        "ValueError: objective: term 'value' (VectorTerm.loss) returned shape [8, 9]; expected a scalar tensor "
        "(reduce it, e.g. with .mean())",
        "CLEAR",
        api(lambda w: _i25_run(w, objective=Objective((_i25("VectorTerm")(), DerivativeTerm(order=1)))), ValueError,
            r"objective: term 'value' \(VectorTerm.loss\) returned shape \[8, 9\]; expected a scalar"),
    ),
    Case(
        "plugin-source-wrong-targets", "TOML",
        '[data] source = "my:Source"  (its batches hold 1 target coordinate of the manifold\'s 2)',
        "ValueError: data.source: plugin_helpers:OneTargetSource: its batch() gives targets [1] per sample; the "
        "manifold Blob (and the test set) has [2] (before training)",
        "CLEAR",
        api(lambda w: _i25_run(w, manifold=_i25("Blob")(size=5), data=_i25_data("plugin_helpers:OneTargetSource")),
            ValueError, r"data.source: plugin_helpers:OneTargetSource: its batch\(\) gives targets \[1\]"),
    ),
    Case(
        "resume-other-activation", "API",
        "run_experiment(config with activation 'sine', the folder of a 'tanh' run)",
        "ValueError: checkpoint: it belongs to a run with other settings (model.activation: 'tanh' in the checkpoint, "
        "'sine' now); resume with the same settings, start over (--no-resume, or resume=False), or use a new folder",
        "CLEAR",
        api(_i25_resume_other_activation, ValueError, r"\(model.activation: 'tanh' in the checkpoint, 'sine' now\)"),
    ),
    Case(
        "objective-one-term", "API",
        "Objective(ValueTerm())",
        "TypeError: terms: expected a tuple or list of terms, got one ValueTerm; write Objective((ValueTerm(...),)) or "
        "Objective([ValueTerm(...)])",
        "CLEAR",
        api(lambda w: Objective(ValueTerm()), TypeError, r"terms: expected a tuple or list of terms, got one ValueTerm"),
    ),
    Case(
        "trainer-model-wrong-input-size", "API",
        "Trainer(model built for 7x7 images, ..., cube data of 9x9).fit()",
        "ValueError: value: expected inputs [n, 7, 7] for the model (its layer model.0 (Affine) takes them), got "
        "[8, 9, 9]; pass inputs of the shape the model was built for (manifold.input_shape), or build the model for "
        "these inputs",
        "CLEAR",
        api(_i25_trainer_wrong_input, ValueError, r"value: expected inputs \[n, 7, 7\] for the model"),
    ),
    Case(
        "generate-disk-full", "CLI",
        "generate cube --n 2 --out j  (the disk fills up)",
        ".j.partial/shard-00000: the disk is full (no space left on device); the finished shards are kept, and the "
        "same command continues the generation: free some space, or write elsewhere, and run the same command again",
        "CLEAR",
        _i25_disk_full(cli(["generate", "cube", *CUBE, "--n", "2", "--out", "{tmp}/j", "--no-progress", "--order", "0"],
                           r"shard-00000: the disk is full \(no space left on device\); the finished shards are kept")),
    ),
    Case(
        "checkpoint-disk-full", "CLI",
        "train --config c.toml --out r  (the disk fills up while the checkpoint is written)",
        "r/checkpoint.pt: the disk is full (no space left on device); nothing was replaced: free some space, or write "
        "elsewhere, and run the same command again",
        "CLEAR",
        _i25_disk_full(cli(["train", "--config", "{toml}", "--out", "{tmp}/r"],
                           r"checkpoint.pt: the disk is full \(no space left on device\); nothing was replaced")),
    ),
    Case("train-data-is-a-file", "CLI", "train --config c.toml --out r --data notes.txt",
         "--data: no complete jet cache at notes.txt (missing meta.json)", "CLEAR",
         cli(["train", "--config", "{toml}", "--out", "{tmp}/r", "--data", "{file}"], r"--data: .*notes\.txt")),
    Case("n-train-overflow", "TOML", "[data] n_train = 9223372036854775807",
         "ValueError: data.n_train: expected an int <= 2147483647, got 9223372036854775807", "CLEAR",
         toml("[data]\nn_train = 9223372036854775807\n", ValueError, r"data.n_train: expected an int <= 2147483647")),
    Case("hidden-overflow", "TOML", "[model] hidden = [9223372036854775807]",
         "ValueError: model.hidden: expected widths <= 16777216, got 9223372036854775807", "CLEAR",
         toml('[model]\nkind = "mlp"\nhidden = [9223372036854775807]\n', ValueError,
              r"model.hidden: expected widths <= 16777216")),
    Case("directions-overflow", "TOML", '[[objective.terms]] kind = "derivative" order = 2 directions = 9223372036854775807',
         "ValueError: objective.terms[0].directions: expected an int <= 65536, got 9223372036854775807", "CLEAR",
         toml('[[objective.terms]]\nkind = "derivative"\norder = 2\ndirections = 9223372036854775807\n', ValueError,
              r"objective.terms\[0\].directions: expected an int <= 65536")),
    Case("grid-without-directions", "TOML", '[[objective.terms]] kind = "derivative" order = 2 grid = true',
         "ValueError: objective.terms[0].grid: only for order 2 with random directions (order=2, directions=None); "
         "the grid is of the pairs of directions", "CLEAR",
         toml('[[objective.terms]]\nkind = "derivative"\norder = 2\ngrid = true\n', ValueError,
              r"objective.terms\[0\].grid: only for order 2 with random directions")),
    Case("grid-first-order", "API", "DerivativeTerm(1, directions=2, grid=True)",
         "ValueError: grid: only for order 2 with random directions (order=1, directions=2); the grid is of the "
         "pairs of directions", "CLEAR",
         api(lambda w: DerivativeTerm(1, directions=2, grid=True), ValueError, r"grid: only for order 2")),
    *[Case(f"cube-{name.replace('_', '-')}-huge", "CLI", f"show cube --{name.replace('_', '-')} 1e308 --out s.png",
           f"--{name.replace('_', '-')}: expected a number <= 1000000.0, got 1e+308", "CLEAR",
           cli(["show", "cube", "--out", "{tmp}/s.png", f"--{name.replace('_', '-')}", "1e308"],
               rf"--{name.replace('_', '-')}: expected a number <= 1000000.0"))
      for name in ("sigma", "camera_distance", "extent", "focal_length")],
    Case("term-weight-huge", "TOML", '[[objective.terms]] kind = "value" weight = 1e308',
         "ValueError: objective.terms[0].weight: expected a number <= 1000000.0, got 1e+308", "CLEAR",
         toml('[[objective.terms]]\nkind = "value"\nweight = 1e308\n', ValueError,
              r"objective.terms\[0\].weight: expected a number <= 1000000.0")),
    Case("weight-decay-huge", "TOML", "[train] weight_decay = 1e308",
         "ValueError: train.weight_decay: expected learning_rate * weight_decay < 1 (AdamW multiplies the weights by "
         "1 - learning_rate * weight_decay every step; at or above 1 they flip sign and blow up), got 1e+308 with "
         "learning_rate 0.001", "CLEAR",
         toml("[train]\nweight_decay = 1e308\n", ValueError, r"train.weight_decay: expected learning_rate \* weight_decay < 1")),
    Case("pr-photons-below-one", "CLI", "generate phase-retrieval --photons 0.5 --n 4 --out j",
         "photons: expected at least 1 (the expected count of a whole pattern), got 0.5: almost every noisy pattern "
         "would count no photon at all, inputs all zero", "CLEAR",
         cli(["generate", "phase-retrieval", "--photons", "0.5", "--n", "4", "--out", "{tmp}/j"],
             r"photons: expected at least 1")),
    Case("pr-photons-few", "API", "PhaseRetrieval(photons=10)",
         "UserWarning: photons: 10 photons per pattern over 1024 pixels: nearly every pixel of a noisy pattern counts "
         "zero, and the inputs say little about the object", "CLEAR",
         _i25_warns(lambda: PhaseRetrieval(photons=10.0), r"photons: 10 photons per pattern")),
    Case("pr-widths-under-a-pixel", "API", "PhaseRetrieval(widths=(0.01, 0.24))",
         "UserWarning: widths: 0.01 is under a quarter of an object pixel (0.125): the blob falls between pixel "
         "centres, so the object is nearly blank and its derivatives vanish; take widths of a pixel (0.125) or more",
         "CLEAR", _i25_warns(lambda: PhaseRetrieval(widths=(0.01, 0.24)), r"widths: 0.01 is under a quarter")),
    Case("cube-sigma-under-a-pixel", "API", "Cube(image_size=9, extent=0.5, sigma=1e-5)",
         "UserWarning: sigma: 1e-05 is under a twentieth of a pixel (0.125): the edges are sharp steps between pixel "
         "centres, so the image's derivatives vanish almost everywhere; take sigma about half a pixel or more", "CLEAR",
         _i25_warns(lambda: Cube(image_size=9, extent=0.5, sigma=1e-5), r"sigma: 1e-05 is under a twentieth")),
    Case("cube-sigma-wider-than-the-image", "API", "Cube(image_size=9, extent=0.5, sigma=5)",
         "UserWarning: sigma: 5 is wider than the whole image (2 extent = 1): the blur spreads each face over it and "
         "the image is nearly uniform; take sigma about a pixel", "CLEAR",
         _i25_warns(lambda: Cube(image_size=9, extent=0.5, sigma=5.0), r"sigma: 5 is wider than the whole image")),
]


def _while_locked(folder: Path, lock: Path, runner: Callable, w: World, capsys) -> None:
    """Run a case while another process (as far as the lock can tell: another open file)
    holds ``lock``."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 4242, "host": "host", "command": "manifoldtrain train"}).encode())
        runner(w, capsys)
    finally:
        os.close(fd)


def _after_a_killed_run(w: World, capsys) -> None:
    """A lock file and a half-written checkpoint left by a killed run: taken over and removed."""
    run = w.tmp / "run2"
    run.mkdir()
    (run / ".manifoldtrain").write_text(json.dumps({"format": "manifoldtrain-output", "kind": "run"}))
    (run / ".manifoldtrain.lock").write_text(json.dumps({"pid": 4242, "host": "host", "command": "train"}))
    (run / ".checkpoint.pt.tmp-k1ll3d00.pt").write_bytes(b"half")
    with pytest.warns(UserWarning, match="was locked by process 4242 on host .*which no longer runs") as caught:
        assert main(["train", "--config", str(w.tmp / "c.toml"), "--out", str(run)]) == 0
    _probe(str(caught[0].message))
    capsys.readouterr()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".manifoldtrain"]


def _export_of(w: World):
    from manifoldtrain.export import export_run

    return torch.export.load(export_run(w.run, w.tmp / "model.pt2")).module()


def _refused_before_work(w: World, capsys, manifold: str, pattern: str) -> None:
    """``train`` with TOML's cube table replaced by ``manifold`` fails matching ``pattern``,
    its --out never made."""
    config = w.tmp / "other_manifold.toml"
    config.write_text(TOML.replace('kind = "cube"\nimage_size = 9\nextent = 0.5\nsigma = 0.08', manifold))
    out = w.tmp / "refused_run"
    cli(["train", "--config", str(config), "--out", str(out)], pattern)(w, capsys)
    assert not out.exists()


_CACHE7 = {}
_CURRENT = [""]


def _cache7(w: World) -> Path:
    if "p" not in _CACHE7:
        p = w.root / "j7"
        save_jets(generate_jets(Cube(image_size=7, extent=0.5, sigma=0.08), 4, order=1, progress=False), p)
        _CACHE7["p"] = p
    return _CACHE7["p"]


# ------------------------------------------------------------------ fixtures and tests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("troubleshooting")
    data = generate_jets(small_cube(), 8, seed=5, order=1, progress=False)
    cache = root / "jets"
    save_jets(data, cache)
    (root / "c.toml").write_text(TOML)
    run = root / "run"
    assert main(["train", "--config", str(root / "c.toml"), "--out", str(run)]) == 0
    return World(root=root, cache=cache, run=run, data=data)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, world, tmp_path, capsys):
    capsys.readouterr()
    world.tmp = tmp_path
    _CURRENT[0] = case.id
    user = _user_files(tmp_path)
    case.run(world, capsys)
    changed = [str(p) for p, text in user.items() if case.cls != "OK" and (not p.exists() or p.read_text() != text)]
    assert not changed, f"the user's files were changed: {changed}"


def test_cases_are_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    assert {c.where for c in CASES} <= {"CLI", "TOML", "API"}
    assert {c.cls for c in CASES} <= {"CLEAR", "OK", "UNCLEAR", "SILENT", "DATA-LOSS"}


def _literal(text: str) -> str:
    """An rst inline literal of ``text``."""
    return "``" + text.replace("`", "'") + "``"


def _plain(text: str) -> str:
    """``text`` as rst body text: every markup character escaped."""
    for char in "\\*_|`<>[]":
        text = text.replace(char, "\\" + char)
    return text


def _command(case: Case) -> str:
    """The input as typed: command lines in full."""
    if case.where == "CLI" and not case.input.startswith("manifoldtrain"):
        return f"manifoldtrain {case.input}"
    return case.input


def rst_table() -> str:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 6 34 34 8", "",
             "   * - Case", "     - Where", "     - Input", "     - What you get", "     - Class"]
    for c in CASES:
        lines += [f"   * - {_literal(c.id)}", f"     - {c.where}", f"     - {_literal(_command(c))}",
                  f"     - {_plain(c.got)}", f"     - {c.cls}"]
    return "\n".join(lines)


def test_docs_table_is_the_case_list():
    text = DOCS.read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    message = "docs/troubleshooting.rst is out of date: run python tests/test_troubleshooting.py --write"
    assert table == rst_table(), message


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        text = DOCS.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOCS.write_text(f"{head}{BEGIN}\n\n{rst_table()}\n\n{END}{tail}")
    else:
        print(rst_table())
