"""Experiment configs: attrs classes, read from and written to TOML.

The TOML layout mirrors :class:`ExperimentConfig`; names are mapped to classes here, at the
file boundary, and nowhere else in the library::

    [manifold]
    kind = "cube"          # any Cube option may follow, e.g. sigma = 0.03

    [data]
    n_train = 4000
    n_test = 1000

    [model]
    kind = "mlp"           # or "convnet"
    hidden = [256, 256, 256]
    activation = "tanh"

    [[objective.terms]]
    kind = "value"

    [[objective.terms]]
    kind = "derivative"
    order = 2
    weight = 1.0
    directions = 2         # omit for every pair

    [train]
    epochs = 100
    batch_size = 64

Unknown tables or keys are errors that name them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import attrs

from manifoldtrain._io import write_text_atomic
from manifoldtrain._validation import attrs_validator, check_int
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import ConvNetConfig, MLPConfig
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import TrainConfig

__all__ = ["DataConfig", "ExperimentConfig", "load_config", "config_from_dict", "config_to_dict", "save_config"]

MANIFOLD_KINDS = {"cube": Cube}
MODEL_KINDS = {"mlp": MLPConfig, "convnet": ConvNetConfig}
TERM_KINDS = {"value": ValueTerm, "derivative": DerivativeTerm}
_DTYPES = ("float32", "float64")


def _check_dtype(instance, attribute, value):
    if value not in _DTYPES:
        raise ValueError(f"{attribute.name}: expected one of {_DTYPES}, got {value!r}")


@attrs.frozen
class DataConfig:
    """Which jets to train and test on.

    Attributes
    ----------
    n_train, n_test : int
        Sizes of the training and test sets (drawn together, then split).
    seed : int
        Seed of the points drawn from the manifold.
    split_seed : int
        Seed of the train/test split.
    cache_dir : str or None
        Cache generated jets here (see :func:`manifoldtrain.data.cached_jets`); ``None``:
        generate in memory every time.
    dtype : str
        ``"float32"`` or ``"float64"``: storage and training precision.
    """

    n_train: int = attrs.field(default=4000, validator=attrs_validator(check_int, minimum=2))
    n_test: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=1))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    split_seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    cache_dir: str | None = None
    dtype: str = attrs.field(default="float32", validator=_check_dtype)


def _default_objective() -> Objective:
    return Objective.second_order()


@attrs.frozen
class ExperimentConfig:
    """Everything a training run needs: manifold, data, model, objective, training, model seed."""

    manifold: Cube = attrs.field(factory=Cube)
    data: DataConfig = attrs.field(factory=DataConfig)
    model: MLPConfig | ConvNetConfig = attrs.field(factory=MLPConfig)
    objective: Objective = attrs.field(factory=_default_objective)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    model_seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))


def _build(kind_map: dict, table: dict, where: str):
    table = dict(table)
    kind = table.pop("kind", None)
    if kind not in kind_map:
        raise ValueError(f"{where}.kind: expected one of {sorted(kind_map)}, got {kind!r}")
    return _construct(kind_map[kind], table, where)


def _construct(cls, table: dict, where: str):
    names = {f.name for f in attrs.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}.{err}") from None


def config_from_dict(d: dict) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from nested dicts (the parsed TOML)."""
    d = dict(d)
    known = {"manifold", "data", "model", "objective", "train", "model_seed"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"config: unknown table(s) {unknown}; expected some of {sorted(known)}")
    kw = {}
    if "manifold" in d:
        kw["manifold"] = _build(MANIFOLD_KINDS, d["manifold"], "manifold")
    if "data" in d:
        kw["data"] = _construct(DataConfig, d["data"], "data")
    if "model" in d:
        kw["model"] = _build(MODEL_KINDS, d["model"], "model")
    if "objective" in d:
        obj = dict(d["objective"])
        terms = obj.pop("terms", None)
        if obj or not isinstance(terms, list) or not terms:
            raise ValueError("objective: expected a non-empty list of [[objective.terms]] tables and nothing else")
        kw["objective"] = Objective(tuple(_build(TERM_KINDS, t, f"objective.terms[{k}]") for k, t in enumerate(terms)))
    if "train" in d:
        kw["train"] = _construct(TrainConfig, d["train"], "train")
    if "model_seed" in d:
        kw["model_seed"] = d["model_seed"]
    return ExperimentConfig(**kw)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read an :class:`ExperimentConfig` from a TOML file (missing tables keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no config file at {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"path: {path} is not valid TOML ({err})") from None
    return config_from_dict(data)


def _table(instance, kind_map: dict | None = None) -> dict:
    out = {}
    if kind_map is not None:
        out["kind"] = next(k for k, v in kind_map.items() if isinstance(instance, v))
    for f in attrs.fields(type(instance)):
        v = getattr(instance, f.name)
        if v is None:
            continue  # TOML has no null: a missing key means the default (None)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_to_dict(config: ExperimentConfig) -> dict:
    """The config as nested plain dicts (what :func:`config_from_dict` reads)."""
    return {
        "model_seed": config.model_seed,
        "manifold": _table(config.manifold, MANIFOLD_KINDS),
        "data": _table(config.data),
        "model": _table(config.model, MODEL_KINDS),
        "objective": {"terms": [_table(t, TERM_KINDS) for t in config.objective.terms]},
        "train": _table(config.train),
    }


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as TOML (atomically); :func:`load_config` reads it back equal."""
    import tomli_w

    write_text_atomic(path, tomli_w.dumps(config_to_dict(config)))
