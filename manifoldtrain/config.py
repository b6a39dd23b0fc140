"""Experiment configs: attrs classes, read from and written to TOML.

The TOML layout mirrors :class:`ExperimentConfig`; names are mapped to classes here, at the
file boundary, and nowhere else in the library::

    [manifold]
    kind = "cube"          # any Cube option may follow, e.g. sigma = 0.03

    [data]
    n_train = 4000
    n_test = 1000
    source = "memory"      # or "shards" (a cache on disk, read batch by batch), "on-the-fly"

    [model]
    kind = "mlp"           # or "convnet"
    hidden = [256, 256, 256]
    activation = "tanh"

    [[objective.terms]]
    kind = "value"

    [[objective.terms]]
    kind = "derivative"
    order = 1

    [[objective.terms]]
    kind = "derivative"
    order = 2
    weight = 0.03          # the tuned default of Objective.second_order()
    directions = 2         # 2 random pairs of directions; omit for every pair

    [[objective.terms]]
    kind = "mypackage.terms:MyTerm"   # a term of your own: any importable Term subclass

    [train]
    epochs = 100
    batch_size = 64

Every ``kind`` is a short name of :mod:`manifoldtrain.registry` or an import path
``"package.module:ClassName"``. Unknown tables or keys are errors that name them.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from pathlib import Path

import attrs

from manifoldtrain._io import write_text_atomic
from manifoldtrain._settings import settings_of
from manifoldtrain._validation import attrs_validator, check_int, dtype_from_name
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, ModelConfig, check_model_config
from manifoldtrain.data.sources import MODES
from manifoldtrain.objectives import Objective
from manifoldtrain.registry import MANIFOLDS, MODELS, TERMS, Registry, settings_table
from manifoldtrain.training import TrainConfig

__all__ = ["DataConfig", "ExperimentConfig", "load_config", "config_from_dict", "config_to_dict", "save_config"]


def _check_test_order(instance, attribute, value):
    if value is not None:
        check_int(attribute.name, value, minimum=0, maximum=2)


def _check_source(instance, attribute, value):
    from manifoldtrain.registry import SOURCES

    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name}: expected 'memory', 'shards', 'on-the-fly' or 'package.module:ClassName' "
                        f"of a DataSource, got {value!r}")
    try:
        SOURCES.get(value)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{attribute.name}: expected 'memory', 'shards', 'on-the-fly' or 'package.module:ClassName' "
                        f"of a DataSource, got {value!r} ({err})") from None


def _check_mode(instance, attribute, value):
    if value is None:
        return
    if value not in MODES:
        raise ValueError(f"{attribute.name}: expected one of {list(MODES)}, got {value!r}")
    if instance.source != "on-the-fly":
        raise ValueError(f"{attribute.name}: chooses how source = 'on-the-fly' draws its points, but source is "
                         f"{instance.source!r}; set source = \"on-the-fly\", or remove mode")


def _check_calibration(instance, attribute, value):
    if value is None:
        return
    check_int(attribute.name, value, minimum=1)
    if instance.source in ("memory", "shards"):
        raise ValueError(f"{attribute.name}: sizes the calibration sample of data computed on the fly; source "
                         f"{instance.source!r} computes its loss scales from all of its data; remove calibration")


#: The largest ``n_train`` or ``n_test``: 2^31 - 1 samples, far beyond any disk's worth of jets;
#: a larger count would be allocated before failing.
MAX_SAMPLES = 2**31 - 1


@attrs.frozen
class DataConfig:
    """Which jets to train and test on.

    Attributes
    ----------
    n_train, n_test : int
        Sizes of the training and test sets (drawn together, then split).
    test_order : int or None
        Jet order of the test set: its derivative RMSEs are reported up to it. ``None`` (the
        default): the objective's order. Data is generated only up to the order needed.
    seed : int
        Seed of the points drawn from the manifold.
    split_seed : int
        Seed of the train/test split.
    path : str or None
        A jet cache written by ``manifoldtrain generate`` to draw the training and test sets
        from (its first ``n_train + n_test`` samples, split by ``split_seed``), instead of
        generating them; it must have been made from the same manifold and settings
        (checked), of an order high enough, in ``dtype`` and computed in ``compute_dtype``.
        ``seed`` is then the cache's own. A relative path is relative to the working directory
        of the command, not to the config file (as is ``cache_dir``'s).
    cache_dir : str or None
        Cache generated jets here (see :func:`manifoldtrain.data.cached_jets`), each data set
        in a subfolder named by its fingerprint (that subfolder, not ``cache_dir``, is what
        ``path`` or ``train --data`` take); ``None``: generate in memory every time. Not with
        ``source = "on-the-fly"``, which stores nothing.
    dtype : str
        ``"float32"`` or ``"float64"``: storage and training precision.
    compute_dtype : str
        ``"float64"`` (default) or ``"float32"``: the precision the jets are computed in,
        before they are stored in ``dtype``. For the cube, float32 computation is about 1.8x
        faster and its jets differ from float64's by ~3e-7 (values) to ~1.5e-6 (second
        derivatives) relative, against ~2.5e-8 for float64 jets stored in float32: worth it
        for jets computed on the fly every epoch. Part of a cache's fingerprint.
    source : str
        Where the training batches come from (:mod:`manifoldtrain.sources`; the test set is
        always fixed, in memory):

        * ``"memory"`` (the default): the training set in memory, as above;
        * ``"shards"``: a jet cache on disk, read batch by batch, never loaded whole
          (:class:`~manifoldtrain.data.sources.ShardedCacheSource`): ``path`` (a cache from
          ``manifoldtrain generate``), or ``cache_dir`` (a sharded cache is generated there,
          and an interrupted generation continued). Training and test samples are those of
          ``"memory"`` with the same settings, and so are the batches and the weights (the
          model's input normalisation comes from the first 2048 training samples, all of
          them for a smaller set);
        * ``"on-the-fly"``: jets computed when a batch needs them
          (:class:`~manifoldtrain.data.sources.OnTheFlySource`), see ``mode``; the test set is the
          test part of ``"memory"``'s samples (computed once);
        * ``"package.module:ClassName"``: a :class:`~manifoldtrain.data.sources.DataSource` of
          your own, made by its ``from_config`` classmethod.
    mode : str or None
        With ``source = "on-the-fly"``: ``"fresh"`` (the default: ``n_train`` new points
        every epoch, drawn from seeds derived from ``seed`` and the epoch) or ``"pool"`` (the
        training part of ``"memory"``'s points, rendered anew whenever a batch holds them).
    calibration : int or None
        With ``source = "on-the-fly"`` (or your own): samples of the calibration sample that
        sets the loss scales (default 512).
    """

    n_train: int = attrs.field(default=4000, validator=attrs_validator(check_int, minimum=2, maximum=MAX_SAMPLES))
    n_test: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=1, maximum=MAX_SAMPLES))
    test_order: int | None = attrs.field(default=None, validator=_check_test_order)
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    split_seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    path: str | None = None
    cache_dir: str | None = None
    dtype: str = attrs.field(default="float32", validator=attrs_validator(dtype_from_name))
    compute_dtype: str = attrs.field(default="float64", validator=attrs_validator(dtype_from_name))
    source: str = attrs.field(default="memory", validator=_check_source)
    mode: str | None = attrs.field(default=None, validator=_check_mode)
    calibration: int | None = attrs.field(default=None, validator=_check_calibration)


def _check_device_name(instance, attribute, value):
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value)):
        raise ValueError(f"{attribute.name}: expected 'cpu', 'cuda' or 'cuda:N' (or no device key), got {value!r}")


def _default_objective() -> Objective:
    return Objective.second_order()


@attrs.frozen
class ExperimentConfig:
    """Everything a training run needs: manifold, data, model, objective, training, model seed.

    Attributes
    ----------
    manifold : Manifold
        Default ``Cube()``.
    data : DataConfig
        Default ``DataConfig()``.
    model : ModelConfig
        Default ``MLPConfig()``; ``ConvNetConfig`` or a model of your own (:class:`~manifoldtrain.nn.ModelConfig`).
    objective : Objective
        Default ``Objective.second_order()`` (a new one per config).
    train : TrainConfig
        Default ``TrainConfig()``.
    model_seed : int
        Seed of the network's initial weights (default 0).
    device : str or None
        Where the model trains, its batches go (cached data are read into page-locked host
        memory for the copy to a GPU) and jets computed on the fly are computed: ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"`` (TOML: a top-level ``device = "cuda"``). ``None`` (the
        default): the CPU. The command line's ``--device`` wins over it; under ``torchrun``,
        ``"cuda"`` means each process's own GPU. Checked for its form here, and for the
        device being there when a run starts.
    """

    manifold: Manifold = attrs.field(factory=Cube, validator=attrs.validators.instance_of(Manifold))
    data: DataConfig = attrs.field(factory=DataConfig)
    model: ModelConfig = attrs.field(factory=MLPConfig, validator=attrs_validator(check_model_config))
    objective: Objective = attrs.field(factory=_default_objective)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    model_seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    device: str | None = attrs.field(default=None, validator=_check_device_name)


def _build(registry: Registry, table: dict, where: str):
    table = dict(table)
    try:
        cls = registry.get(table.pop("kind", None))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}.{err}") from None
    return _construct(cls, table, where)


#: What a TOML value of each scalar field type must be (bools are not ints, nor numbers).
_SCALAR_KINDS = {
    "bool": ("a boolean (true or false, without quotes)", lambda v: isinstance(v, bool)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "None": ("nothing", lambda v: v is None),
}
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", type(None): "None"}


def _scalar_kinds(annotation) -> tuple[str, ...] | None:
    """The scalar kinds (keys of ``_SCALAR_KINDS``) a field annotation allows, e.g. ``"int | None"``
    -> ``("int", "None")``; ``None`` if it is anything else (a tuple, a class, ...): not checked here."""
    if annotation is None:
        return None
    if isinstance(annotation, str):
        parts = tuple(part.strip() for part in annotation.split("|"))
    elif annotation in _TYPE_NAMES:
        parts = (_TYPE_NAMES[annotation],)
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = tuple(_TYPE_NAMES.get(a, "?") for a in typing.get_args(annotation))
    else:
        return None
    parts = tuple("None" if part in ("None", "NoneType") else part for part in parts)
    return parts if all(part in _SCALAR_KINDS for part in parts) else None


def _check_scalars(cls, values: dict, where: str) -> None:
    """Check each value against its field's annotation where that is ``bool``, ``int``, ``float``
    or ``str`` (or a union of them with ``None``): a TOML ``"false"`` for a bool is an error
    naming the key, not a true value. Fields with a converter accept what it accepts."""
    for f in settings_of(cls):
        if f.name not in values or f.converted:
            continue
        kinds = _scalar_kinds(f.annotation)
        if kinds is None:
            continue
        v = values[f.name]
        if any(_SCALAR_KINDS[kind][1](v) for kind in kinds):
            continue
        want = " or ".join(_SCALAR_KINDS[kind][0] for kind in kinds if kind != "None")
        got = f"the string {v!r}" if isinstance(v, str) else f"{type(v).__name__} {v!r}"
        hint = ""
        if kinds == ("bool",) and isinstance(v, str) and v.strip().lower() in ("true", "false"):
            hint = f"; write {f.name} = {v.strip().lower()}"
        raise TypeError(f"{where}.{f.name}: expected {want}, got {got}{hint}")


def _construct(cls, table: dict, where: str):
    """``cls`` built from a config's table of its settings (:func:`~manifoldtrain._settings.settings_of`:
    an attrs class's fields, or a plain class's keyword arguments)."""
    try:
        settings = settings_of(cls)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from None
    names = {f.name for f in settings}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    _check_scalars(cls, table, where)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}.{err}") from None


def config_from_dict(d: dict) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from nested dicts (the parsed TOML)."""
    d = dict(d)
    tables, keys = {"manifold", "data", "model", "objective", "train"}, {"model_seed", "device"}
    unknown = sorted(set(d) - tables - keys)
    if unknown:
        raise ValueError(f"config: unknown table(s) or top-level key(s) {unknown}; expected tables "
                         f"{sorted(tables)} and top-level keys {sorted(keys)}")
    kw = {}
    if "manifold" in d:
        kw["manifold"] = _build(MANIFOLDS, d["manifold"], "manifold")
    if "data" in d:
        kw["data"] = _construct(DataConfig, d["data"], "data")
    if "model" in d:
        kw["model"] = _build(MODELS, d["model"], "model")
    if "objective" in d:
        obj = dict(d["objective"])
        terms = obj.pop("terms", None)
        if obj or not isinstance(terms, list) or not terms:
            raise ValueError("objective: expected a non-empty list of [[objective.terms]] tables and nothing else")
        kw["objective"] = Objective(tuple(_build(TERMS, t, f"objective.terms[{k}]") for k, t in enumerate(terms)))
    if "train" in d:
        kw["train"] = _construct(TrainConfig, d["train"], "train")
    if "model_seed" in d:
        kw["model_seed"] = d["model_seed"]
    if "device" in d:
        kw["device"] = d["device"]
    return ExperimentConfig(**kw)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read an :class:`ExperimentConfig` from a TOML file (missing tables keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no config file at {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # a binary file: not TOML either
        raise ValueError(f"path: {path} is not valid TOML ({err})") from None
    return config_from_dict(data)


def config_to_dict(config: ExperimentConfig) -> dict:
    """The config as nested plain dicts (what :func:`config_from_dict` reads)."""
    out = {"model_seed": config.model_seed}
    if config.device is not None:  # TOML has no null: no key means no device
        out["device"] = config.device
    return out | {
        "manifold": settings_table(config.manifold, MANIFOLDS),
        "data": settings_table(config.data),
        "model": settings_table(config.model, MODELS),
        "objective": {"terms": [settings_table(t, TERMS) for t in config.objective.terms]},
        "train": settings_table(config.train),
    }


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as TOML (atomically); :func:`load_config` reads it back equal."""
    import tomli_w

    write_text_atomic(path, tomli_w.dumps(config_to_dict(config)))
