"""The robustness comparison: value, invariance and oracle training on the same data and budget.

:func:`run_suite` trains every objective of a :class:`SuiteConfig` (invariance over a sweep
of strengths: the trade-off curve) at each network width, on one shared data set and the same
wall-clock budget, evaluates each network with :func:`~manifoldtrain.robustness.evaluate_robustness`,
and writes ``results.json``, ``tradeoff.png`` (clean RMSE against amplification, one point per
run) and ``worst_case.png``. ``manifoldtrain robustness`` runs its quick defaults;
``benchmarks/robustness.py`` the full sweep. :func:`evaluate_run` scores one trained run folder.

The objectives are :class:`SuiteObjective` s (a name, a builder ``strength -> Objective``, and
the family whose strengths it sweeps); the bundled ones, by name (:data:`OBJECTIVES`):

* ``value``: values only;
* ``invariance-noise``: values, plus noise augmentation with the clean target at ``strength``;
* ``invariance-adversarial``: values, plus adversarial training with the clean target in the L2
  ball of radius ``strength`` (3 gradient-ascent steps per training step), at radii 0.1 and 0.3
  (its own sweep, in the units of the adversarial budgets, not ``invariance_strengths``);
* ``invariance-jacobian``: values, plus the Jacobian penalty at ``strength`` (2 directions);
* ``oracle-random``: second-order derivative training (:meth:`Objective.second_order`), plus the
  oracle term along 2 random perturbations at ``strength``;
* ``oracle-hessian``: second-order derivative training, plus the oracle term along the top
  direction of the error operator (2 subspace iterations per step) at ``strength``;
* ``second``: second-order derivative training alone (the ablation: what the oracle term adds).

An objective of your own joins the comparison as a :class:`SuiteObjective` in
``SuiteConfig.objectives``, beside the names; its family says which side of the summary it
is on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from manifoldtrain._io import output_folder
from manifoldtrain._plain import digest, first_difference
from manifoldtrain._validation import attrs_validator, check_float, check_int, check_levels, dtype_from_name
from manifoldtrain.data import JetDataset
from manifoldtrain.nn import check_hidden
from manifoldtrain.objectives import (
    AdversarialInvarianceTerm, HessianOracleTerm, JacobianInvarianceTerm, NoiseInvarianceTerm, Objective, OracleTerm,
    ValueTerm,
)
from manifoldtrain.records import write_json
from manifoldtrain.manifold import Manifold
from manifoldtrain.registry import check_manifold_setting, manifold_label, manifold_of, manifold_table
from manifoldtrain.robustness.evaluation import (
    adversarial_error, amplification, evaluate_robustness, invariant_amplification,
)

__all__ = ["OBJECTIVES", "SuiteObjective", "robustness_objective", "SuiteConfig", "run_suite", "evaluate_run",
           "format_runs", "summarise", "pareto_fronts", "pareto", "scores"]


def _second(*extra) -> Objective:
    return Objective(Objective.second_order().terms + tuple(extra))


#: The families of :class:`SuiteObjective`: which strengths of the :class:`SuiteConfig` an
#: objective is trained at (``None``: once, without a strength).
FAMILIES = ("invariance", "oracle")


def _check_run_name(instance, attribute, value):
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected a str, got {type(value).__name__}")
    if not value or any(c in value for c in '/\\:*?"<>|') or value.startswith("."):
        raise ValueError(f"{attribute.name}: expected a non-empty name usable in a folder name, got {value!r}")


def _check_family(instance, attribute, value):
    if value is not None and value not in FAMILIES:
        raise ValueError(f"{attribute.name}: expected one of {list(FAMILIES)} or None, got {value!r}")


def _check_callable(instance, attribute, value):
    if not callable(value):
        raise TypeError(f"{attribute.name}: expected a callable strength -> Objective, got {type(value).__name__}")


def _check_positive_levels(instance, attribute, value):
    if not value or any(v <= 0 for v in value):
        raise ValueError(f"{attribute.name}: expected at least one strength, each > 0, got {value!r}")


@attrs.frozen
class SuiteObjective:
    """One objective of the robustness comparison.

    Attributes
    ----------
    name : str
        The ``objective`` of its results and the start of its runs' folder names
        (``{name}-w{width}-s{strength}``, without ``-s...`` when ``family`` is ``None``).
    build : callable
        ``build(strength) -> Objective``, the training objective at a strength (a float > 0;
        ``None`` when ``family`` is ``None``).
    family : str or None
        ``"invariance"``: one run at each of ``SuiteConfig.invariance_strengths``, compared as
        the conventional baseline; ``"oracle"``: one at each of ``oracle_strengths``, compared
        as oracle training; ``None`` (default): one run without a strength, in the table but
        in neither side of the summary (:func:`summarise`).
    strengths : tuple of float or None
        Its own sweep, instead of its family's, for an objective whose strength is in other
        units than the family's (``invariance-adversarial``: L2 radii, where
        ``SuiteConfig.invariance_strengths`` are noise levels per input entry). ``None``
        (default): the family's sweep. Only with a family; each > 0.

    Examples
    --------
    >>> from manifoldtrain.objectives import NoiseInvarianceTerm, Objective, ValueTerm
    >>> mine = SuiteObjective("noise-x2", lambda s: Objective((ValueTerm(), NoiseInvarianceTerm(s, weight=2.0))),
    ...                       family="invariance")
    >>> SuiteConfig(objectives=("value", mine, "oracle-hessian")).runs()[:3]
    [('value', 128, None), ('noise-x2', 128, 0.03), ('noise-x2', 128, 0.3)]
    >>> SuiteConfig(objectives=("value", "invariance-adversarial")).runs()
    [('value', 128, None), ('invariance-adversarial', 128, 0.1), ('invariance-adversarial', 128, 0.3)]
    """

    name: str = attrs.field(validator=_check_run_name)
    build: Callable[[float | None], Objective] = attrs.field(validator=_check_callable)
    family: str | None = attrs.field(default=None, validator=_check_family)
    strengths: tuple[float, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else check_levels("strengths", v))

    @strengths.validator
    def _check_strengths(self, attribute, value):
        if value is None:
            return
        if self.family is None:
            raise ValueError(f"strengths: {self.name!r} has no family, so it trains once without a strength; "
                             f"got strengths {value!r}")
        _check_positive_levels(self, attribute, value)

    def __call__(self, strength: float | None) -> Objective:
        """:meth:`objective` (the values of :data:`OBJECTIVES` were callables ``strength -> Objective``)."""
        return self.objective(strength)

    def objective(self, strength: float | None) -> Objective:
        """``build(strength)``, checked: a strength > 0 for a family, none without; an Objective back."""
        if self.family is not None:
            try:
                check_float("strength", strength, positive=True)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{err} (the {self.family} objective {self.name!r} trains at a strength)") from None
        elif strength is not None:
            raise ValueError(f"strength: {self.name!r} has no family, so it trains without a strength; got {strength}")
        objective = self.build(strength)
        if not isinstance(objective, Objective):
            raise TypeError(f"build: the objective {self.name!r} built {type(objective).__name__}, expected an Objective")
        return objective


#: The bundled objectives of the comparison, by name (the module docstring says what each is).
OBJECTIVES: dict[str, SuiteObjective] = {o.name: o for o in (
    SuiteObjective("value", lambda s: Objective.value()),
    SuiteObjective("second", lambda s: Objective.second_order()),
    SuiteObjective("invariance-noise", lambda s: Objective((ValueTerm(), NoiseInvarianceTerm(s))), "invariance"),
    SuiteObjective("invariance-adversarial", lambda s: Objective((ValueTerm(), AdversarialInvarianceTerm(s, steps=3))),
                   "invariance", strengths=(0.1, 0.3)),
    SuiteObjective("invariance-jacobian", lambda s: Objective((ValueTerm(), JacobianInvarianceTerm(s, directions=2))),
                   "invariance"),
    SuiteObjective("oracle-random", lambda s: _second(OracleTerm(s, directions=2)), "oracle"),
    SuiteObjective("oracle-hessian", lambda s: _second(HessianOracleTerm(s, directions=1, iterations=2)), "oracle"),
)}


def robustness_objective(name: str, strength: float | None = None) -> Objective:
    """The bundled objective called ``name`` (see the module docstring) at ``strength``."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name].objective(strength)


def _resolve(value) -> SuiteObjective:
    return value if isinstance(value, SuiteObjective) else OBJECTIVES[value]


def _check_objectives(instance, attribute, value):
    for v in value:
        if not isinstance(v, (str, SuiteObjective)):
            raise TypeError(f"{attribute.name}: expected names among {sorted(OBJECTIVES)} or SuiteObjective "
                            f"instances, got {type(v).__name__} {v!r}")
    if not value or any(isinstance(v, str) and v not in OBJECTIVES for v in value):
        raise ValueError(f"{attribute.name}: expected names among {sorted(OBJECTIVES)} or SuiteObjective instances, "
                         f"got {value!r}")
    names = [_resolve(v).name for v in value]
    if len(set(names)) < len(names):
        raise ValueError(f"{attribute.name}: two objectives are called {next(n for n in names if names.count(n) > 1)!r}; "
                         "each needs its own name (it names its runs' folders)")


def _levels(name, default):
    return attrs.field(default=default, converter=lambda v: check_levels(name, v))


@attrs.frozen
class SuiteConfig:
    """Settings of the robustness comparison (defaults: the quick version, about 7 minutes on 2 cores).

    Attributes
    ----------
    manifold : str or Manifold
        A registered manifold name or ``"package.module:ClassName"``, with its default
        settings, or a :class:`~manifoldtrain.Manifold` instance with settings of your choice
        (``manifoldtrain robustness --manifold NAME --SETTING VALUE`` builds one).
    n_train, n_test : int
        Training samples (shared by every run) and test samples (robustness figures are
        computed on the first ``eval_samples`` of them).
    widths : tuple of int
        Hidden width of the MLPs compared (``depth`` tanh layers each).
    depth : int
    seconds_per_run : float
        Wall-clock training budget of every run.
    batch_size, learning_rate : int, float
    objectives : tuple of str or SuiteObjective
        Names from :data:`OBJECTIVES`, or objectives of your own (:class:`SuiteObjective`).
    invariance_strengths : tuple of float
        The sweep of noise levels (per input entry) of the invariance runs (except those with a
        sweep of their own, :attr:`SuiteObjective.strengths`: ``invariance-adversarial``).
    oracle_strengths : tuple of float
        Strengths of the oracle terms: a noise level per input entry for ``oracle-random``, the
        L2 norm of the perturbation for ``oracle-hessian`` (see :mod:`manifoldtrain.objectives.robust`).
    noise_levels : tuple of float
        Evaluation noise levels (per input entry) of the noisy RMSE.
    budgets : tuple of float
        L2 budgets of the adversarial error.
    eval_samples, attack_samples : int
        Test samples for the amplification and noisy RMSE, and for the attack.
    attack_steps : int
        Gradient-ascent steps of the attack.
    seed : int
        Data, initial weights, batch order, noise.
    dtype : str
    progress : bool
    """

    manifold: str | Manifold = attrs.field(default="cube", validator=lambda _, a, v: check_manifold_setting(v, a.name))
    n_train: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=2))
    n_test: int = attrs.field(default=200, validator=attrs_validator(check_int, minimum=1))
    widths: tuple[int, ...] = attrs.field(default=(128,), converter=tuple, validator=check_hidden)
    depth: int = attrs.field(default=3, validator=attrs_validator(check_int, minimum=1))
    seconds_per_run: float = attrs.field(default=40.0, validator=attrs_validator(check_float, positive=True))
    batch_size: int = attrs.field(default=64, validator=attrs_validator(check_int, minimum=1))
    learning_rate: float = attrs.field(default=1e-3, validator=attrs_validator(check_float, positive=True))
    objectives: tuple[str, ...] = attrs.field(
        default=("value", "invariance-noise", "invariance-jacobian", "invariance-adversarial", "oracle-random",
                 "oracle-hessian"),
        converter=tuple, validator=_check_objectives)
    invariance_strengths: tuple[float, ...] = attrs.field(
        default=(0.03, 0.3), converter=lambda v: check_levels("invariance_strengths", v), validator=_check_positive_levels)
    oracle_strengths: tuple[float, ...] = attrs.field(
        default=(1.0,), converter=lambda v: check_levels("oracle_strengths", v), validator=_check_positive_levels)
    noise_levels: tuple[float, ...] = _levels("noise_levels", (0.003, 0.01, 0.03))
    budgets: tuple[float, ...] = _levels("budgets", (0.1, 0.3, 1.0))
    eval_samples: int = attrs.field(default=100, validator=attrs_validator(check_int, minimum=1))
    attack_samples: int = attrs.field(default=30, validator=attrs_validator(check_int, minimum=1))
    attack_steps: int = attrs.field(default=5, validator=attrs_validator(check_int, minimum=0))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    dtype: str = attrs.field(default="float32", validator=attrs_validator(dtype_from_name))
    progress: bool = True

    def objective(self, name: str) -> SuiteObjective:
        """The :class:`SuiteObjective` of this config called ``name``."""
        for candidate in map(_resolve, self.objectives):
            if candidate.name == name:
                return candidate
        raise ValueError(f"objective: this config has no objective {name!r}; it has "
                         f"{[_resolve(v).name for v in self.objectives]}")

    def runs(self) -> list[tuple[str, int, float | None]]:
        """``(objective, width, strength)`` of every run, in order."""
        strengths = {"invariance": self.invariance_strengths, "oracle": self.oracle_strengths, None: (None,)}
        return [(o.name, width, s) for width in self.widths for o in map(_resolve, self.objectives)
                for s in (strengths[o.family] if o.strengths is None else o.strengths)]

    def to_dict(self) -> dict:
        """The settings as JSON-able data: objectives of :data:`OBJECTIVES` by name, one's own as
        ``{"name", "family", "build"}`` (the builder by ``module:qualname``), with ``"strengths"``
        when it sweeps its own."""
        out = attrs.asdict(self, recurse=False)
        out["manifold"] = manifold_table(self.manifold)
        out["objectives"] = [v if isinstance(v, str) else {"name": v.name, "family": v.family, "build": _describe(v.build)}
                             | ({} if v.strengths is None else {"strengths": list(v.strengths)})
                             for v in self.objectives]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def experiment(self, name: str, width: int, strength: float | None):
        """The :class:`~manifoldtrain.config.ExperimentConfig` of one run."""
        from manifoldtrain.config import DataConfig, ExperimentConfig
        from manifoldtrain.nn import MLPConfig
        from manifoldtrain.training import TrainConfig

        return ExperimentConfig(
            manifold=manifold_of(self.manifold),
            data=DataConfig(n_train=self.n_train, n_test=self.n_test, test_order=2, seed=self.seed,
                            split_seed=self.seed, dtype=self.dtype),
            model=MLPConfig(hidden=(width,) * self.depth, activation="tanh"),
            objective=self.objective(name).objective(strength),
            train=TrainConfig(epochs=1_000_000, time_budget=self.seconds_per_run, batch_size=self.batch_size,
                              learning_rate=self.learning_rate, eval_every=0, seed=self.seed, progress=self.progress),
            model_seed=self.seed,
        )


def _describe(build) -> str:
    """``module:qualname`` of a function or class, else its repr (a partial, a callable object)."""
    module, qualname = getattr(build, "__module__", None), getattr(build, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(build)


def _run_name(name: str, width: int, strength: float | None) -> str:
    return f"{name}-w{width}" + (f"-s{strength:g}" if strength is not None else "")


#: The settings of a :class:`SuiteConfig` that say how a network is scored (the others say
#: which networks the comparison trains): what ``manifoldtrain robustness --run`` takes.
EVALUATION_SETTINGS = ("noise_levels", "budgets", "eval_samples", "attack_samples", "attack_steps", "seed")


def _evaluation_settings(config: SuiteConfig) -> dict:
    return {k: getattr(config, k) for k in EVALUATION_SETTINGS}


def scores(model, manifold, test: JetDataset, *, noise_levels, budgets, eval_samples: int, attack_samples: int,
           attack_steps: int, seed: int) -> dict:
    """:class:`~manifoldtrain.robustness.RobustnessMetrics` as a dict: everything on the first
    ``eval_samples`` test samples, the adversarial error (the costly part) on the first
    ``attack_samples``."""
    few = test.subset(slice(0, eval_samples))
    out = evaluate_robustness(model, manifold, few, noise_levels=noise_levels, budgets=(), seed=seed).to_dict()
    adv = adversarial_error(model, manifold, test.subset(slice(0, attack_samples)), budgets, steps=attack_steps, seed=seed)
    out["adversarial_error"] = {f"{k:g}": v["rms"] for k, v in adv.items()}
    out["oracle_failures"] += sum(v["failed"] for v in adv.values())
    out["oracle_focal"] += sum(v["focal"] for v in adv.values())
    return out


def _robustness(model, manifold, test: JetDataset, config: SuiteConfig) -> dict:
    """The scores on the first ``eval_samples`` test samples, plus the clean RMSE and the
    amplification on the rest (``selection_rmse``, ``selection_amplification``; None when no
    test sample is left): the split that chooses among networks (:func:`summarise`), never the
    one that scores them."""
    out = scores(model, manifold, test, **_evaluation_settings(config))
    out["selection_rmse"] = out["selection_amplification"] = None
    rest = test.subset(slice(config.eval_samples, None))
    if len(rest):
        rest = rest.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            out["selection_rmse"] = float((model(rest.inputs.value) - rest.targets.value).double().pow(2).mean().sqrt())
        out["selection_amplification"] = amplification(model, rest, seed=config.seed).medians()["amplification"]
    return out


#: Bumped when the figures of a run's ``robustness_eval.json`` change: older ones are recomputed.
_SCORES_VERSION = 2


def run_suite(out_dir: str | os.PathLike = "robustness", config: SuiteConfig | None = None, *, echo=print,
              force: bool = False) -> dict:
    """Train and evaluate every run of ``config`` into ``out_dir``; return the results.

    ``results.json`` holds ``"runs"``: per run ``objective``, ``width``, ``strength`` (``None``
    for objectives without one), ``test_rmse``, ``amplification``, ``invariance_part``,
    ``sensitivity_part``, ``noisy_rmse`` and ``noisy_rmse_clean`` (noise level -> RMSE),
    ``adversarial_error`` (budget -> RMS error), ``oracle_failures``, ``oracle_focal`` (samples
    scored past a focal point, see :func:`~manifoldtrain.robustness.adversarial_error`), ``seconds``, ``epochs``;
    and ``"summary"`` (:func:`summarise`: invariance against oracle runs, ratios > 1 favour
    the oracle). Each run keeps its folder under ``runs/`` (config, checkpoint, robustness_eval.json): a
    stopped suite resumes where it stopped.
    """
    config = SuiteConfig() if config is None else config
    if not isinstance(config, SuiteConfig):
        raise TypeError(f"config: expected a SuiteConfig, got {type(config).__name__}")
    with output_folder(out_dir, "robustness", force=force, argument="out_dir") as out:  # locked while the suite runs
        return _run_suite(out, config, echo)


def _run_suite(out: Path, config: SuiteConfig, echo) -> dict:
    """:func:`run_suite` in its claimed output folder ``out``."""
    from manifoldtrain.experiment import make_data, model_from_checkpoint, run_checkpoint, run_experiment
    from manifoldtrain.records import machine_info
    from manifoldtrain.plotting import plot_tradeoff, plot_worst_case
    from manifoldtrain.training import load_checkpoint

    t0 = time.perf_counter()
    plan = config.runs()
    echo(f"manifoldtrain robustness: {manifold_label(config.manifold)}, {config.n_train} training samples, widths {list(config.widths)}, "
         f"{len(plan)} runs of {config.seconds_per_run:g} s -> {out}")
    first = config.experiment(*plan[0])
    train, test = make_data(first, progress=config.progress)
    manifold = first.manifold
    settings = _evaluation_settings(config)
    runs = []
    for name, width, strength in plan:
        label = _run_name(name, width, strength)
        echo(f"  {label}: training ...")
        run_dir = out / "runs" / label
        res = run_experiment(config.experiment(name, width, strength), run_dir, data=(train, test),
                             progress=config.progress)
        cache = run_dir / "robustness_eval.json"
        key = digest({"settings": settings, "steps": res["steps"], "version": _SCORES_VERSION})
        robust = None
        if cache.is_file():
            try:
                saved = json.loads(cache.read_text())
                robust = saved["robustness"] if saved.get("key") == key else None
            except (OSError, ValueError, KeyError):
                robust = None
        if robust is None:
            echo(f"  {label}: evaluating robustness ...")
            model = model_from_checkpoint(load_checkpoint(run_checkpoint(run_dir)))
            robust = _robustness(model, manifold, test, config)
            write_json(cache, {"key": key, "robustness": robust})
        runs.append({"objective": name, "family": config.objective(name).family, "width": width, "strength": strength,
                     **robust,
                     "seconds": res["seconds"], "epochs": res["epochs"]})
        echo("  " + format_runs(runs[-1:]).splitlines()[-1])
    reference = invariant_amplification(test.subset(slice(0, config.eval_samples)), seed=config.seed).medians()
    results = {"runs": runs, "summary": summarise(runs, config), "pareto": pareto_fronts(runs, config),
               "reference_amplification": reference["amplification"], "config": config.to_dict(),
               "total_seconds": time.perf_counter() - t0, "machine": machine_info()}
    write_json(out / "results.json", results)
    plot_tradeoff(runs, out / "tradeoff.png", title=f"{manifold_label(config.manifold)}: clean accuracy against worst-case amplification",
                  reference=reference["amplification"])
    # The worst case of the most and the least robust network, on the first test sample.
    by_amp = sorted(runs, key=lambda r: r["amplification"])
    panels = []
    for r in (by_amp[-1], by_amp[0]):
        model = model_from_checkpoint(load_checkpoint(run_checkpoint(out / "runs" / _run_name(r["objective"], r["width"], r["strength"]))))
        amp = amplification(model, test.subset(slice(0, 1)), seed=config.seed)
        panels.append((_run_name(r["objective"], r["width"], r["strength"]), float(amp.full[0]), amp.vectors[0]))
    budget = max(config.budgets) if config.budgets else 1.0
    plot_worst_case(test.inputs.value[0], panels, budget, out / "worst_case.png")
    echo(format_runs(runs))
    for k, v in results["summary"].items():
        echo(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    echo(f"  amplification of a perfectly invariant network (N' = 0, median ||Y J^+||_2): "
         f"{results['reference_amplification']:.3g}")
    for k, v in results["pareto"].items():
        echo(f"  Pareto front, {k}: {', '.join(v)}")
    echo(f"wrote {out / 'results.json'}, {out / 'tradeoff.png'} and {out / 'worst_case.png'} "
         f"({results['total_seconds']:.0f} s)")
    return results


def summarise(runs: list[dict], config: SuiteConfig) -> dict:
    """The paper's comparison, per width, with one oracle network scored on both axes.

    Choices are made on the selection split (``selection_rmse``, ``selection_amplification``:
    test samples past ``eval_samples``), the ratios are computed on the scoring samples; runs
    recorded without a selection split are chosen on their scores, and the summary says so.
    The most accurate invariance run (lowest selection RMSE) and the most robust one (lowest
    selection amplification) face *the same* oracle network: the most robust oracle run among
    those at least as accurate as that most accurate invariance run (the claim is "better on
    both at once"), or the most accurate oracle run if none is. Its clean RMSE is compared with
    the first's, its amplification and adversarial error (middle budget) with the second's.
    Ratios are invariance / oracle: above 1 favours the oracle network.
    ``"w{width}: oracle network dominated by"`` lists the invariance runs at least as good on
    both clean RMSE and amplification (empty: none is)."""
    budget = f"{config.budgets[len(config.budgets) // 2]:g}" if config.budgets else None
    out: dict = {}
    for width in config.widths:
        inv = [r for r in runs if r["width"] == width and _family(r, config) == "invariance"]
        ora = [r for r in runs if r["width"] == width and _family(r, config) == "oracle"]
        if not inv or not ora:
            continue
        name = lambda r: _run_name(r["objective"], width, r["strength"])  # noqa: E731
        chosen = all(r.get("selection_rmse") is not None for r in inv + ora)
        rmse, amp = (("selection_rmse", "selection_amplification") if chosen else ("test_rmse", "amplification"))
        acc_i = min(inv, key=lambda r: r[rmse])
        rob_i = min(inv, key=lambda r: r[amp])
        matched = [r for r in ora if r[rmse] <= acc_i[rmse]]
        one = min(matched, key=lambda r: r[amp]) if matched else min(ora, key=lambda r: r[rmse])
        out[f"w{width}: chosen on"] = ("the selection split (test samples past eval_samples)" if chosen
                                       else "the scoring samples (no selection split recorded)")
        out[f"w{width}: clean RMSE, {name(acc_i)} / {name(one)}"] = acc_i["test_rmse"] / one["test_rmse"]
        out[f"w{width}: amplification, {name(rob_i)} / {name(one)}"] = rob_i["amplification"] / one["amplification"]
        if budget is not None:
            out[f"w{width}: adversarial error at {budget}, {name(rob_i)} / {name(one)}"] = (
                rob_i["adversarial_error"][budget] / one["adversarial_error"][budget])
        out[f"w{width}: oracle network dominated by"] = ", ".join(
            name(r) for r in inv if r["test_rmse"] <= one["test_rmse"] and r["amplification"] <= one["amplification"]
        ) or "none"
    return out


def pareto_fronts(runs: list[dict], config: SuiteConfig) -> dict:
    """Per width and family (``invariance``, ``oracle``, and ``other`` for runs of neither):
    the run names on the Pareto front of (clean RMSE, amplification), most accurate first."""
    out: dict = {}
    for width in config.widths:
        for family in ("invariance", "oracle", None):
            front = pareto([r for r in runs if r["width"] == width and _family(r, config) == family])
            if front:
                out[f"w{width} {family or 'other'}"] = [_run_name(r["objective"], width, r["strength"]) for r in front]
    return out


def pareto(runs: list[dict]) -> list[dict]:
    """The runs that no other run beats on both ``test_rmse`` and ``amplification`` (at least as
    good on both, better on one), most accurate first."""
    def beaten(r):
        return any(o["test_rmse"] <= r["test_rmse"] and o["amplification"] <= r["amplification"]
                   and (o["test_rmse"], o["amplification"]) != (r["test_rmse"], r["amplification"]) for o in runs)
    return sorted((r for r in runs if not beaten(r)), key=lambda r: r["test_rmse"])


def _family(run: dict, config: SuiteConfig) -> str | None:
    """A run's family: as its record says, else (records written before families) its
    objective's in ``config``, or the bundled one of that name; ``None`` if none knows it."""
    if "family" in run:
        return run["family"]
    known = dict(OBJECTIVES) | {o.name: o for o in map(_resolve, config.objectives)}
    return known[run["objective"]].family if run["objective"] in known else None


def format_runs(runs: list[dict]) -> str:
    """The runs as a plain-text table."""
    budgets = list(runs[0]["adversarial_error"]) if runs else []
    levels = list(runs[0]["noisy_rmse"]) if runs else []
    head = f"{'run':<34} {'RMSE':>9} {'amplif.':>9} {'invar.':>9} {'sensit.':>9}"
    head += "".join(f" {'noisy@' + k:>12}" for k in levels) + "".join(f" {'adv@' + k:>10}" for k in budgets)
    lines = [head]
    for r in runs:
        line = (f"{_run_name(r['objective'], r['width'], r['strength']):<34} {r['test_rmse']:9.2e} {r['amplification']:9.2e} "
                f"{r['invariance_part']:9.2e} {r['sensitivity_part']:9.2e}")
        line += "".join(f" {r['noisy_rmse'][k]:12.2e}" for k in levels)
        line += "".join(f" {r['adversarial_error'][k]:10.2e}" for k in budgets)
        lines.append(line)
    return "\n".join(lines)


def _test_set(config, order: int, progress: bool) -> JetDataset:
    """The run's test set, with jets of ``order``: the same points as
    :func:`~manifoldtrain.experiment.make_data` draws and splits, but only the test samples'
    jets are computed (a cache, ``data.path`` or ``data.cache_dir``, is read as the run read it)."""
    from manifoldtrain._validation import dtype_from_name
    from manifoldtrain.data import manifold_description
    from manifoldtrain.experiment import make_data
    from manifoldtrain.jet import Jet

    d = config.data
    if d.path is not None or d.cache_dir is not None:
        config = attrs.evolve(config, data=attrs.evolve(d, test_order=max(order, d.test_order or 0)))
        return make_data(config, progress=progress)[1]
    n = d.n_train + d.n_test
    compute = dtype_from_name("data.compute_dtype", d.compute_dtype)  # as generate_jets draws and computes them
    points = config.manifold.sample(n, torch.Generator().manual_seed(d.seed), dtype=compute)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(d.split_seed))
    chosen = points[perm[: d.n_test].sort().values]
    dtype = dtype_from_name("data.dtype", d.dtype)
    parts = [config.manifold.jets(chunk, order) for chunk in chosen.split(256)]
    inputs = Jet(*(torch.cat(c).to(dtype) for c in zip(*(x.components() for x, _ in parts))))
    targets = Jet(*(torch.cat(c).to(dtype) for c in zip(*(y.components() for _, y in parts))))
    return JetDataset(chosen.to(dtype), inputs, targets, {"manifold": manifold_description(config.manifold), "seed": d.seed})


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    noise_levels=(0.003, 0.01, 0.03),
    budgets=(0.1, 0.3, 1.0),
    eval_samples: int = 100,
    attack_samples: int = 30,
    attack_steps: int = 5,
    seed: int = 0,
    manifold=None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict:
    """Every robustness figure of the trained run in ``run_dir`` on its own test set.

    The run's ``config.toml`` says how to rebuild its test data (regenerated, with jets of
    order >= 1) and its manifold; ``manifold``, if given, must be the run's (its settings are
    compared with the checkpoint's). ``device``: where to evaluate (default: the CPU). Returns the :class:`~manifoldtrain.robustness.RobustnessMetrics`
    as a dict, plus the worst-case direction of the first test sample (``"worst_case"``: image,
    direction, amplification) for :func:`~manifoldtrain.plotting.plot_worst_case`.
    """
    from manifoldtrain.config import load_config
    from manifoldtrain.data import manifold_description
    from manifoldtrain.experiment import model_from_checkpoint, run_checkpoint
    from manifoldtrain.manifold import check_is_manifold
    from manifoldtrain.training import CHECKPOINT_NAME, load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file() or not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(f"run: {run_dir} is not a trained run folder (no {CHECKPOINT_NAME} and config.toml); "
                                "train one with `manifoldtrain train --out DIR`")
    config = load_config(run_dir / "config.toml")
    state = load_checkpoint(run_checkpoint(run_dir))  # its best model where it kept one
    if manifold is not None:
        check_is_manifold("manifold", manifold)
        diff = first_difference(state.get("extra", {}).get("manifold"), manifold_description(manifold), "manifold",
                                 ("in the checkpoint", "given"))
        if diff is not None:
            raise ValueError(f"manifold: the run was trained on another manifold or settings ({diff})")
    manifold = config.manifold if manifold is None else manifold
    test = _test_set(config, max(1, config.data.test_order or 0), progress)
    model = model_from_checkpoint(state)
    if device is not None:
        model, test = model.to(device), test.to(device)
    out = scores(model, manifold, test, noise_levels=noise_levels, budgets=budgets, eval_samples=eval_samples,
                  attack_samples=attack_samples, attack_steps=attack_steps, seed=seed)
    amp = amplification(model, test.subset(slice(0, 1)), seed=seed)
    out["worst_case"] = {"input": test.inputs.value[0], "direction": amp.vectors[0], "amplification": float(amp.full[0])}
    return out
