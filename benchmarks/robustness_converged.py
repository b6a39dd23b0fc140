"""Robustness at equal data, each network trained to convergence: value, invariance and oracle
training, several seeds and widths, chosen on a validation split, scored on a test set.

``robustness.py`` compares the objectives at equal wall-clock (the cost view). This script is
the paper's setting: the same 1000 cube samples for every network (800 trained on, 200 held
out as the validation split by the trainer, the same 200 for every run of a seed), a fixed
epoch budget per objective (value-based runs 1000 epochs, past their best validation epoch;
second-order based runs 1600: ``accuracy.py`` found second order converged at 800 epochs of
2000 samples, but here, on 800 samples, 1600 epochs gain 4-13% in clean RMSE over 800, see
``benchmarks/README.md``; ``--second-epochs`` sets it), the model kept at its
lowest validation RMSE along the run, and every network scored on the same 200 test samples.
Per width and seed it trains

* ``value``;
* ``invariance-noise`` and ``invariance-jacobian`` over a sweep of strengths (the conventional
  baseline: noise augmentation with the clean target, and the Jacobian penalty of Hoffman et
  al. 2019), and ``invariance-adversarial`` (adversarial training with the clean target,
  Madry et al. 2018: 3 steps of projected gradient ascent in the L2 ball of that radius per
  training step; L2 0.1, 0.3 and 1, the units of the attack budgets);
* the controls: ``second`` (second-order derivative training alone) and ``second-jacobian``
  (second order plus the Jacobian penalty at ``--control-strength``), so the oracle term's own
  effect is visible against both derivative training and derivative training with invariance;
* ``oracle-random`` and ``oracle-hessian`` over their sweeps (second order plus the oracle term).

Each run is its own process writing one part file (``parts/s{seed}-w{width}-{run}.json``,
atomically); a part that exists is not run again and a run in progress resumes from its
checkpoint, so the sweep can stop and continue in a later session (copy the parts along).
The summary reads whatever parts exist.

Scoring, per network: test RMSE; worst-case amplification (median of ``||E||_2``,
``E = N'(x) - Y J^+``) with its invariance and sensitivity parts on ``--eval-samples`` test
samples; noisy RMSE against the exact oracle; adversarial error against the exact oracle at L2
budgets 0.1, 0.3, 1 on ``--attack-samples``; and on the validation split its RMSE and
amplification, which alone choose among networks. The reference: the amplification of a
perfectly invariant network (``N' = 0``), i.e. the median of ``||Y J^+||_2`` over the same test
samples (:func:`manifoldtrain.robustness.invariant_amplification`): what invariance training
tends to as its strength grows.

The summary, per width (mean, sd and per-seed values over seeds):

* the most accurate invariance network (lowest *validation* RMSE among the invariance runs and
  value) and the most robust one (lowest *validation* amplification);
* one oracle network at a time scored on both axes: its test RMSE against the most accurate
  invariance network's, and its amplification and adversarial error against the most robust
  invariance network's (ratios above 1 favour the oracle network). Three oracle networks,
  each chosen on validation: ``oracle_matched``, the most robust of those at least as accurate
  as the most accurate invariance network (the paper's claim: better on both axes at once;
  the most accurate oracle run if none is); ``oracle_robust``, the most robust; and
  ``oracle_accurate``, the most accurate; and each one's amplification against the reference
  (``ratio to the invariant limit``): what the Jacobian penalty tends to as its strength grows
  (``N' -> 0``; a network with ``N' = 0`` amplifies exactly the reference): the ratio against
  the far end of an ever stronger Jacobian sweep. It is not a bound on every network: one whose
  ``N'`` matches ``Y J^+`` in part amplifies less, as the oracle networks do;
* the Pareto front of each family on (test RMSE, amplification), and whether the chosen
  oracle network is dominated by any invariance network.

Usage::

    python benchmarks/robustness_converged.py --work rc --jobs 2                    # the full protocol (days on 2 cores)
    python benchmarks/robustness_converged.py --work rc --widths 128 --jobs 2       # one width (~2 hours on 2 cores)
    python benchmarks/robustness_converged.py --work rc --summarize --out S.json     # the tables of the parts so far
    python benchmarks/robustness_converged.py --work rc800 --second-epochs 800 --reuse rc --jobs 2
                                                  # another second-order budget, the value-based runs taken from rc
    python benchmarks/robustness_converged.py --quick --work /tmp/rcq               # smoke run (seconds)

The default settings are the ones of the published table (``benchmarks/README.md``), whose
parts are committed in ``benchmarks/results/robustness_converged_epochs1600/parts``:
``--work benchmarks/results/robustness_converged_epochs1600`` continues them. The parts of the
800-epoch budget (width 128 and width 256) are in ``benchmarks/results/robustness_converged``;
``--second-epochs 800`` continues those.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs
import torch

from manifoldtrain.experiment import make_data, run_experiment
from manifoldtrain.objectives import JacobianInvarianceTerm, Objective
from manifoldtrain.plotting import plot_tradeoff
from manifoldtrain.records import command_line, machine_info, write_json
from manifoldtrain.robustness import amplification, invariant_amplification
from manifoldtrain.robustness.suite import SuiteConfig, SuiteObjective, pareto
from manifoldtrain.robustness.suite import scores as suite_scores

HERE = Path(__file__).resolve().parent

#: (objective, family, strengths or None, epoch budget key)
FULL = dict(
    n_train=1000, n_test=200, validation=0.2, widths=(128, 256, 512), seeds=(0, 1, 2),
    epochs={"value": 1000, "second": 1600},
    noise_strengths=(0.01, 0.03, 0.1, 0.3, 1.0), jacobian_strengths=(0.03, 0.1, 0.3, 1.0), adversarial_strengths=(0.1, 0.3, 1.0),
    oracle_random_strengths=(1.0,), oracle_hessian_strengths=(0.3, 1.0), control_strength=0.1, control_seeds=None,
    eval_samples=100, attack_samples=30, attack_steps=5, budgets=(0.1, 0.3, 1.0), noise_levels=(0.003, 0.01, 0.03),
)
QUICK = dict(
    FULL, n_train=40, n_test=8, widths=(8,), seeds=(0,), epochs={"value": 2, "second": 1},
    noise_strengths=(0.03,), jacobian_strengths=(0.1,), adversarial_strengths=(0.3,), oracle_random_strengths=(1.0,),
    oracle_hessian_strengths=(1.0,),
    eval_samples=4, attack_samples=2, attack_steps=1, budgets=(0.3,), noise_levels=(0.01,),
)
#: objective -> (family in the summary, which epoch budget, which strengths)
RUNS = {
    "value": ("invariance", "value", None),
    "invariance-noise": ("invariance", "value", "noise_strengths"),
    "invariance-jacobian": ("invariance", "value", "jacobian_strengths"),
    "invariance-adversarial": ("invariance", "value", "adversarial_strengths"),
    "second": ("control", "second", None),
    "second-jacobian": ("control", "second", "control_strength"),
    "oracle-random": ("oracle", "second", "oracle_random_strengths"),
    "oracle-hessian": ("oracle", "second", "oracle_hessian_strengths"),
}


def _second_jacobian(strength):
    return Objective(Objective.second_order().terms + (JacobianInvarianceTerm(strength, directions=2),))


def suite_config(settings: dict, width: int, seed: int) -> SuiteConfig:
    control = SuiteObjective("second-jacobian", _second_jacobian, family="invariance")  # a strength; family unused here
    return SuiteConfig(
        n_train=settings["n_train"], n_test=settings["n_test"], widths=(width,), seed=seed, progress=False,
        objectives=("value", "second", "invariance-noise", "invariance-jacobian", "invariance-adversarial", "oracle-random",
                    "oracle-hessian", control))


def plan(settings: dict) -> list[tuple[int, int, str, float | None]]:
    """``(seed, width, objective, strength)`` of every run, seed-major (a seed completes first);
    the controls only for the seeds of ``control_seeds`` (None: every seed); only the runs named
    in ``only`` (an objective, or objective-strength as in the part's name) when it is given."""
    out = []
    for seed in settings["seeds"]:
        for width in settings["widths"]:
            for name, (family, _, key) in RUNS.items():
                if family == "control" and settings.get("control_seeds") is not None and seed not in settings["control_seeds"]:
                    continue
                strengths = (None,) if key is None else settings[key]
                strengths = (strengths,) if isinstance(strengths, float) else strengths
                out += [(seed, width, name, s) for s in strengths]
    only = settings.get("only")
    if only is not None:
        out = [r for r in out if r[2] in only or label(*r).split("-", 2)[2] in only]
    return out


def label(seed, width, name, strength) -> str:
    return f"s{seed}-w{width}-{name}" + ("" if strength is None else f"-{strength:g}")


def run_setup(settings: dict, seed: int, width: int, name: str, strength: float | None,
              eval_every: int | None = None):
    """The experiment, training set and test set of the run ``(seed, width, name, strength)``.

    The one place that says what a run is (its objective, epoch budget, validation split and
    data), so that :func:`run_one` and ``robustness_curve.py`` (which retrains a run with
    more records) cannot drift apart. ``eval_every`` defaults to a fiftieth of the budget."""
    _, budget, _ = RUNS[name]
    epochs = settings["epochs"][budget]
    config = suite_config(settings, width, seed)
    experiment = config.experiment(name, width, strength)
    experiment = attrs.evolve(experiment, train=attrs.evolve(
        experiment.train, epochs=epochs, time_budget=None, validation=settings["validation"],
        eval_every=max(1, epochs // 50) if eval_every is None else eval_every))
    # Order-2 jets for every run (a value run trains on values only): the validation split
    # then carries the first-order jets that its amplification needs.
    data_config = attrs.evolve(config.experiment("second", width, None), train=experiment.train)
    train, test = make_data(data_config, progress=False)
    return experiment, train, test


def run_one(work: Path, settings: dict, seed: int, width: int, name: str, strength: float | None) -> dict:
    """Train one network (resuming its checkpoint), score it, write its part; return the part."""
    family = RUNS[name][0]
    experiment, train, test = run_setup(settings, seed, width, name, strength)
    run_dir = work / "runs" / label(seed, width, name, strength)
    res = run_experiment(experiment, run_dir, data=(train, test), progress=False)
    from manifoldtrain.experiment import model_from_checkpoint, run_checkpoint
    from manifoldtrain.training import load_checkpoint

    model = model_from_checkpoint(load_checkpoint(run_checkpoint(run_dir)))  # the lowest validation RMSE
    validation = train.split(round(settings["validation"] * len(train)), experiment.train.seed)[1]  # the trainer's split
    manifold = experiment.manifold
    few = test.subset(slice(0, settings["eval_samples"]))
    t0 = time.perf_counter()
    scores = suite_scores(model, manifold, test, noise_levels=settings["noise_levels"], budgets=settings["budgets"],
                          eval_samples=settings["eval_samples"], attack_samples=settings["attack_samples"],
                          attack_steps=settings["attack_steps"], seed=seed)
    scores["test_rmse"] = res["test"]["rmse"]  # on all test samples
    val_few = validation.subset(slice(0, settings["eval_samples"]))
    part = {
        "seed": seed, "width": width, "objective": name, "strength": strength, "family": family,
        **scores,
        "validation_rmse": res["validation"]["rmse"] if res["validation"] else None,
        "validation_amplification": amplification(model, val_few, seed=seed).medians()["amplification"],
        "best_epoch": res["best_epoch"], "epochs": res["epochs"], "seconds": res["seconds"],
        "evaluation_seconds": time.perf_counter() - t0,
        "history": [{"epoch": r.get("epoch"), "validation_rmse": (r.get("validation") or {}).get("rmse"),
                     "test_rmse": (r.get("test") or {}).get("rmse")} for r in res["history"]],
        "settings": {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()},
        "machine": machine_info(),
    }
    part["reference_amplification"] = invariant_amplification(few).medians()["amplification"]
    write_json(part_path(work, seed, width, name, strength), part)
    shutil.rmtree(run_dir, ignore_errors=True)
    return part


def part_path(work: Path, seed, width, name, strength) -> Path:
    return work / "parts" / (label(seed, width, name, strength) + ".json")


def _in_progress(work: Path, run) -> bool:
    """Whether another process is training ``run`` now: its learning curve was written in the
    last 5 minutes (every evaluation rewrites it, about 50 times a run)."""
    curve = work / "runs" / label(*run) / "metrics.csv"
    return curve.is_file() and time.time() - curve.stat().st_mtime < 300


def _taken(work: Path, run) -> bool:
    """Whether ``run`` is done or another process is on it: its part exists, its learning curve
    was written in the last 5 minutes, or its log was opened in the last 5 minutes (a run writes
    its first learning-curve point a little after it starts)."""
    log = work / "logs" / (label(*run) + ".log")
    return (part_path(work, *run).exists() or _in_progress(work, run)
            or (log.is_file() and time.time() - log.stat().st_mtime < 300))


def budget_mismatches(work: Path, settings: dict) -> list[str]:
    """The planned runs whose part exists but was trained for another epoch budget than
    ``settings`` asks for (such a part would be kept, not retrained, and summarised as if it
    were the asked-for budget)."""
    out = []
    for r in plan(settings):
        path = part_path(work, *r)
        if path.exists():
            want = settings["epochs"][RUNS[r[2]][1]]
            got = json.loads(path.read_text()).get("epochs")
            if got != want:
                out.append(f"{path.name}: {got} epochs, asked for {want}")
    return out


#: The settings that, besides the seed, width, objective and strength in its name and the epoch
#: budget of its kind, decide what one run trains and how it is scored.
RUN_SETTINGS = ("n_train", "n_test", "validation", "eval_samples", "attack_samples", "attack_steps", "budgets",
                "noise_levels")


def _plain(value):
    return json.loads(json.dumps(value))  # tuples as lists, as a part stores them


def same_run(part: dict, settings: dict) -> list[str]:
    """The settings in which ``part`` was trained or scored otherwise than ``settings`` would
    train and score the same run (empty: the run would be the same one)."""
    mine = part.get("settings", {})
    budget = RUNS[part["objective"]][1]
    out = [k for k in RUN_SETTINGS if _plain(mine.get(k)) != _plain(settings[k])]
    if mine.get("epochs", {}).get(budget) != settings["epochs"][budget]:
        out.append(f"epochs[{budget}]")
    return out


def reuse_parts(work: Path, settings: dict, sources: list[Path]) -> list[str]:
    """Copy into ``work`` the parts of planned runs that ``work`` lacks and a source folder holds
    for the same run (:func:`same_run`): a sweep at another second-order budget takes the
    value-based runs, whose budget it shares, from the default sweep instead of training them
    again. Each copy records where it came from (``reused_from``); returns the names copied.
    A source part of another epoch budget is passed over (this sweep trains its own); one of
    another setting is refused, naming the settings that differ."""
    missing = [str(src) for src in sources if not (Path(src) / "parts").is_dir()]
    if missing:
        raise SystemExit(f"--reuse: no parts folder in {', '.join(missing)} (expected a sweep's --work folder)")
    copied = []
    for r in plan(settings):
        target = part_path(work, *r)
        if target.exists():
            continue
        for src in sources:
            path = part_path(Path(src), *r)
            if not path.exists():
                continue
            part = json.loads(path.read_text())
            differ = same_run(part, settings)
            other = [d for d in differ if not d.startswith("epochs[")]
            if other:
                raise SystemExit(f"--reuse {src}: {path.name} was trained or scored with other settings "
                                 f"({', '.join(other)}) than this sweep's")
            if differ:
                continue  # another epoch budget (the one this sweep changes): trained here
            write_json(target, {**part, "reused_from": str(path)})
            copied.append(target.name)
            break
    return copied


def run_all(work: Path, settings: dict, jobs: int, threads: int, argv_settings: list[str]) -> None:
    wrong = budget_mismatches(work, settings)
    if wrong:
        raise SystemExit(f"--work {work} holds parts of another epoch budget ({'; '.join(wrong)}): "
                         "give this budget a work folder of its own")
    todo = [r for r in plan(settings) if not part_path(work, *r).exists()]
    busy = [r for r in todo if _taken(work, r)]
    print(f"{len(plan(settings))} runs, {len(todo)} to run, {jobs} at a time"
          + (f"; left to another process that is training them: {[label(*r) for r in busy]}" if busy else ""),
          flush=True)
    running, failed = [], []
    while todo or running:
        while todo and len(running) < jobs:
            # Checked again before each start: several sweeps may share a work folder (one per
            # core, started at different times), each taking the runs no other has taken.
            seed, width, name, strength = todo.pop(0)
            if _taken(work, (seed, width, name, strength)):
                continue
            log = work / "logs" / (label(seed, width, name, strength) + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--threads", str(threads),
                   *argv_settings, "--one", str(seed), str(width), name, "none" if strength is None else repr(strength)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            handle = open(log, "w")
            running.append((subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env), handle,
                            label(seed, width, name, strength), time.time()))
            print(f"started {running[-1][2]}", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, handle, name, t0 = item
            if proc.poll() is not None:
                handle.close()
                running.remove(item)
                print(f"{'finished' if proc.returncode == 0 else 'FAILED'} {name} in {time.time() - t0:.0f} s", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {failed} (see {work / 'logs'})")


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values, "n": len(values)}


def _name(r: dict) -> str:
    return r["objective"] + ("" if r["strength"] is None else f" {r['strength']:g}")


def expected_runs(settings: dict) -> set[str]:
    """The invariance and oracle runs (as :func:`_name` spells them) that one seed of one width
    must have before its choices and ratios mean anything: a seed missing one of them would
    be chosen among fewer networks than the others. Whatever ``only`` trains now, a seed is
    complete with every run of the plan."""
    one = dict(settings, seeds=settings["seeds"][:1], widths=settings["widths"][:1], only=None)
    return {_name({"objective": n, "strength": st}) for _, _, n, st in plan(one) if RUNS[n][0] != "control"}


def summarize(parts: list[dict], budget: str = "0.3", expected: set[str] | None = None) -> dict:
    """Per width: selections on validation, ratios per seed and over seeds, Pareto fronts.

    With ``expected`` (:func:`expected_runs`), a seed that lacks any of those runs is left out
    of the choices, the ratios and the per-run table (listed under ``incomplete``), so that
    every figure of a width is over the same seeds."""
    out: dict = {}
    for width in sorted({p["width"] for p in parts}):
        per_seed, fronts, incomplete = [], {}, {}
        for seed in sorted({p["seed"] for p in parts if p["width"] == width}):
            runs = [p for p in parts if p["width"] == width and p["seed"] == seed]
            missing = sorted(expected - {_name(r) for r in runs}) if expected is not None else []
            if missing:
                incomplete[seed] = missing
                continue
            inv = [r for r in runs if r["family"] == "invariance"]
            ora = [r for r in runs if r["family"] == "oracle"]
            if not inv or not ora:
                continue
            acc_i = min(inv, key=lambda r: r["validation_rmse"])
            rob_i = min(inv, key=lambda r: r["validation_amplification"])
            rob_o = min(ora, key=lambda r: r["validation_amplification"])
            acc_o = min(ora, key=lambda r: r["validation_rmse"])
            # The most robust oracle network at least as accurate as the most accurate invariance
            # network (both on validation); if none is, the most accurate oracle network.
            matched = [r for r in ora if r["validation_rmse"] <= acc_i["validation_rmse"]]
            mat_o = min(matched, key=lambda r: r["validation_amplification"]) if matched else acc_o
            row = {"seed": seed, "complete": len(runs), "reference_amplification": runs[0]["reference_amplification"],
                   "invariance_accurate": _name(acc_i), "invariance_robust": _name(rob_i),
                   "oracle_robust": _name(rob_o), "oracle_accurate": _name(acc_o), "oracle_matched": _name(mat_o)}
            for tag, o in (("oracle_matched", mat_o), ("oracle_robust", rob_o), ("oracle_accurate", acc_o)):
                row[f"{tag}: accuracy ratio"] = acc_i["test_rmse"] / o["test_rmse"]
                row[f"{tag}: amplification ratio"] = rob_i["amplification"] / o["amplification"]
                # Against the limit of the Jacobian penalty (N' = 0) as its strength grows.
                row[f"{tag}: amplification ratio to the invariant limit"] = (row["reference_amplification"]
                                                                           / o["amplification"])
                row[f"{tag}: adversarial ratio @{budget}"] = (rob_i["adversarial_error"][budget]
                                                             / o["adversarial_error"][budget])
                row[f"{tag}: dominated by"] = [_name(r) for r in inv if r["test_rmse"] <= o["test_rmse"]
                                               and r["amplification"] <= o["amplification"]]
            per_seed.append(row)
            fronts[seed] = {fam: [(_name(r), r["test_rmse"], r["amplification"]) for r in pareto(
                [r for r in runs if r["family"] == fam])] for fam in ("invariance", "control", "oracle")}
        ratios = {k: _stats([r[k] for r in per_seed]) for k in (per_seed[0] if per_seed else {})
                  if "ratio" in k}
        # Each objective's figures over seeds.
        table = {}
        for p in parts:
            if p["width"] != width or p["seed"] in incomplete:  # every row over the same seeds
                continue
            table.setdefault(_name(p), []).append(p)
        for name, v in table.items():
            if len({p["epochs"] for p in v}) > 1:
                raise ValueError(f"the parts of {name} at width {width} were trained for different epoch budgets "
                                 f"{sorted({p['epochs'] for p in v})}: summarise each budget from its own work folder")
        rows = {k: {"family": v[0]["family"], "seeds": sorted(p["seed"] for p in v),
                    **{m: _stats([p[m] for p in v]) for m in ("test_rmse", "amplification", "invariance_part",
                                                               "sensitivity_part", "validation_rmse",
                                                               "validation_amplification", "best_epoch", "seconds")},
                    "epochs": v[0]["epochs"],
                    # Seeds whose lowest validation RMSE came in the last tenth of the budget: the
                    # run may still be improving (not converged).
                    "late_best": sum(p["best_epoch"] > 0.9 * p["epochs"] for p in v),
                    f"adversarial@{budget}": _stats([p["adversarial_error"][budget] for p in v]),
                    "noisy_rmse": {lvl: _stats([p["noisy_rmse"][lvl] for p in v]) for lvl in v[0]["noisy_rmse"]}}
                for k, v in table.items()}
        out[f"w{width}"] = {"per_seed": per_seed, "ratios": ratios, "runs": rows, "pareto": fronts,
                            "incomplete": incomplete,
                            "reference_amplification": _stats([p["reference_amplification"] for p in parts
                                                               if p["width"] == width and p["seed"] not in incomplete]
                                                              or [p["reference_amplification"] for p in parts
                                                                  if p["width"] == width])}
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for width, s in summary.items():
        ref = s["reference_amplification"]
        lines.append(f"\n## width {width[1:]}: reference amplification of an invariant network "
                     f"(median ||Y J^+||_2) {ref['mean']:.3g}")
        lines.append("| run | seeds | test RMSE | amplification | invariance part | sensitivity part | adv @0.3 | "
                     "val RMSE | val amplif. | best epoch / budget |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for name, r in sorted(s["runs"].items(), key=lambda kv: ("invariance", "control", "oracle").index(kv[1]["family"])):
            f = lambda m: (f"{r[m]['mean']:.3g}" + (f" ± {r[m]['sd']:.2g}" if r[m]["sd"] is not None else ""))  # noqa: E731
            lines.append(f"| {name} | {len(r['seeds'])} | {f('test_rmse')} | {f('amplification')} | {f('invariance_part')} "
                         f"| {f('sensitivity_part')} | {f('adversarial@0.3')} | {f('validation_rmse')} "
                         f"| {f('validation_amplification')} | {r['best_epoch']['mean']:.0f} / {r['epochs']} |")
        late = [f"{name} ({r['late_best']} of {len(r['seeds'])})" for name, r in s["runs"].items() if r["late_best"]]
        if late:
            lines.append("best validation epoch in the last tenth of the budget (may not be converged): "
                         + ", ".join(late))
        for seed, missing in s.get("incomplete", {}).items():
            lines.append(f"seed {seed}: incomplete, left out of the choices and ratios (missing {', '.join(missing)})")
        for row in s["per_seed"]:
            lines.append(f"seed {row['seed']}: invariance most accurate {row['invariance_accurate']}, most robust "
                         f"{row['invariance_robust']}; oracle matched {row['oracle_matched']} (dominated by "
                         f"{row['oracle_matched: dominated by']}), most robust {row['oracle_robust']} (dominated by "
                         f"{row['oracle_robust: dominated by']}), most accurate {row['oracle_accurate']}")
        for k, v in s["ratios"].items():
            lines.append(f"{k}: {v['mean']:.3g}" + (f" ± {v['sd']:.2g}" if v["sd"] is not None else "")
                         + f" (per seed {', '.join(f'{x:.3g}' for x in v['values'])})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--work", default="robustness_converged", help="folder of the parts, runs and logs (resumable)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run, in this process")
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--control-seeds", type=int, nargs="+", default=None,
                    help="train the controls (second, second-jacobian) for these seeds only (default: every seed)")
    ap.add_argument("--only", nargs="+", default=None, metavar="RUN",
                    help="train only these runs: an objective (oracle-hessian) or an objective and strength "
                         "(oracle-hessian-1)")
    ap.add_argument("--adversarial-strengths", type=float, nargs="*", default=None, metavar="EPS",
                    help=f"the L2 radii of invariance-adversarial (default {' '.join(map(str, FULL['adversarial_strengths']))}; "
                         "none given: no adversarial runs); a seed counts as complete only with every planned run, so "
                         "summarise with the same option")
    ap.add_argument("--value-epochs", type=int, default=None,
                    help=f"epoch budget of the value-based runs (default {FULL['epochs']['value']})")
    ap.add_argument("--second-epochs", type=int, default=None,
                    help=f"epoch budget of the second-order-based runs (default {FULL['epochs']['second']}); "
                         "with another budget, use another --work: the summary mixes whatever parts it finds")
    ap.add_argument("--reuse", nargs="+", default=None, metavar="WORK",
                    help="before training, copy the parts of the same runs (same settings and epoch budget) from "
                         "these work folders: e.g. a --second-epochs sweep takes the value-based runs from the default one")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--summarize", action="store_true", help="only summarise the parts that exist")
    ap.add_argument("--out", default=None, help="write the summary (JSON) here")
    ap.add_argument("--one", nargs=4, metavar=("SEED", "WIDTH", "OBJECTIVE", "STRENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    passed = []
    if args.quick:
        passed.append("--quick")
    for key in ("widths", "seeds", "control_seeds", "only", "adversarial_strengths"):
        if getattr(args, key) is not None:
            settings[key] = tuple(getattr(args, key))
            passed += [f"--{key.replace('_', '-')}", *map(str, getattr(args, key))]
    for key in ("value", "second"):
        if getattr(args, f"{key}_epochs") is not None:
            settings["epochs"] = {**settings["epochs"], key: getattr(args, f"{key}_epochs")}
            passed += [f"--{key}-epochs", str(getattr(args, f"{key}_epochs"))]
    work = Path(args.work)
    if args.one:
        seed, width, name, strength = args.one
        run_one(work, settings, int(seed), int(width), name, None if strength == "none" else float(strength))
        return 0
    if args.reuse and not args.summarize:
        copied = reuse_parts(work, settings, [Path(w) for w in args.reuse])
        print(f"reused {len(copied)} parts from {' '.join(args.reuse)}" + (f": {' '.join(copied)}" if copied else ""),
              flush=True)
    if not args.summarize:
        if args.quick:
            for r in plan(settings):
                if not part_path(work, *r).exists():
                    run_one(work, settings, *r)
        else:
            run_all(work, settings, args.jobs, args.threads, passed)
    parts = [json.loads(p.read_text()) for p in sorted((work / "parts").glob("*.json"))]
    if not parts:
        print(f"no parts in {work / 'parts'} yet")
        return 1
    budget = f"{settings['budgets'][len(settings['budgets']) // 2]:g}"
    summary = summarize(parts, budget, expected_runs(settings))
    print(format_summary(summary))
    if args.out:
        write_json(args.out, {"summary": summary, "parts": len(parts), "command": command_line(argv, __file__), "settings": {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()}})
        figure = Path(args.out).with_suffix(".png")
        means = [{"objective": r.split(" ")[0], "strength": float(r.split(" ")[1]) if " " in r else None,
                  "width": int(w[1:]), "test_rmse": v["test_rmse"]["mean"], "amplification": v["amplification"]["mean"]}
                 for w, ws in summary.items() for r, v in ws["runs"].items()]
        plot_tradeoff(means, figure, reference=statistics.fmean(
            ws["reference_amplification"]["mean"] for ws in summary.values()),
            title="Cube, equal data, chosen on validation: means over complete seeds")
        print(f"wrote {args.out} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
