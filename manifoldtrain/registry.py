"""Names for classes, at the boundary of files and the command line (nowhere else).

One registry per kind of piece (:data:`MANIFOLDS`, :data:`MODELS`, :data:`ACTIVATIONS`,
:data:`TERMS`, :data:`SOURCES`), shared by
the TOML configs (:mod:`manifoldtrain.config`) and the command line. A ``kind`` is either a
registered short name (``"cube"``, ``"derivative"``) or an import path
``"package.module:ClassName"`` of any class of the right base, so a user's own piece works
without registering it. Registering gives it a short name:

>>> from manifoldtrain.registry import TERMS
>>> TERMS.get("derivative").__name__
'DerivativeTerm'
>>> TERMS.get("manifoldtrain.objectives:ValueTerm").__name__
'ValueTerm'
>>> TERMS.name_of(TERMS.get("value"))
'value'
"""

from __future__ import annotations

from manifoldtrain._registry import Registry
from manifoldtrain._settings import settings_of, setting_values
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.nn import ACTIVATIONS, ConvNetConfig, MLPConfig
from manifoldtrain.data.sources import DataSource, InMemorySource, OnTheFlySource, ShardedCacheSource
from manifoldtrain.objectives import (
    AdversarialInvarianceTerm, DerivativeTerm, HessianOracleTerm, JacobianInvarianceTerm, NoiseInvarianceTerm, OracleTerm,
    Term, ValueTerm,
)

__all__ = ["Registry", "MANIFOLDS", "MODELS", "ACTIVATIONS", "TERMS", "SOURCES", "settings_table", "manifold_of",
           "check_manifold_setting", "manifold_table", "manifold_label"]


#: Manifolds by name: ``cube``, ``phase-retrieval``.
MANIFOLDS = Registry("manifold", Manifold)
MANIFOLDS.register("cube", Cube)
MANIFOLDS.register("phase-retrieval", PhaseRetrieval)

#: Network configs by name: ``mlp``, ``convnet``.
MODELS = Registry("model")
MODELS.register("mlp", MLPConfig)
MODELS.register("convnet", ConvNetConfig)

#: :data:`ACTIVATIONS` (smooth activations by name) is :data:`manifoldtrain.nn.ACTIVATIONS`: the
#: module that builds the networks owns its table, and this one names it beside the others.

#: Objective terms by name: ``value``, ``derivative``, ``invariance-noise``,
#: ``invariance-adversarial``, ``invariance-jacobian``, ``oracle``, ``oracle-hessian``.
TERMS = Registry("term", Term)
TERMS.register("value", ValueTerm)
TERMS.register("derivative", DerivativeTerm)
TERMS.register("invariance-noise", NoiseInvarianceTerm)
TERMS.register("invariance-adversarial", AdversarialInvarianceTerm)
TERMS.register("invariance-jacobian", JacobianInvarianceTerm)
TERMS.register("oracle", OracleTerm)
TERMS.register("oracle-hessian", HessianOracleTerm)

#: Data sources by name, for ``[data] source = ...`` in TOML configs: ``memory``,
#: ``shards``, ``on-the-fly``, or ``"package.module:ClassName"`` of any DataSource subclass.
SOURCES = Registry("data source", DataSource)
SOURCES.register("memory", InMemorySource)
SOURCES.register("shards", ShardedCacheSource)
SOURCES.register("on-the-fly", OnTheFlySource)


def settings_table(instance, registry: Registry | None = None) -> dict:
    """The settings of ``instance`` as a config table: ``{"kind": name}`` first where
    ``registry`` is given (:meth:`Registry.name_of`), then every setting that is not None
    (TOML has no null: a missing key means the default), tuples as lists."""
    out = {}
    if registry is not None:
        out["kind"] = registry.name_of(instance)
    for name, v in setting_values(instance).items():
        if v is not None:
            out[name] = list(v) if isinstance(v, tuple) else v
    return out


def check_manifold_setting(value, argument: str = "manifold") -> None:
    """Check a ``manifold`` setting of the demo or the robustness suite (:func:`manifold_of`)
    without building the manifold: a name that :data:`MANIFOLDS` knows or imports, or a
    :class:`~manifoldtrain.Manifold` instance.

    Raises
    ------
    TypeError, ValueError
        Naming ``argument``.
    """
    if isinstance(value, Manifold):
        return
    if not isinstance(value, str):
        raise TypeError(f"{argument}: expected a manifold's name ('cube', 'phase-retrieval' or "
                        f"'package.module:ClassName') or a Manifold instance, got {type(value).__name__}")
    try:
        MANIFOLDS.get(value)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{argument}: {err}") from None


def manifold_of(value, argument: str = "manifold") -> Manifold:
    """The manifold a ``manifold`` setting stands for: a name (registered, or
    ``"package.module:ClassName"``) is built with its default settings; a
    :class:`~manifoldtrain.Manifold` instance is used as it is.

    >>> manifold_of("cube").image_size
    41
    """
    check_manifold_setting(value, argument)
    return value if isinstance(value, Manifold) else MANIFOLDS.get(value)()


def manifold_table(value) -> str | dict:
    """A ``manifold`` setting as JSON-able data: a name as it is, an instance as its config
    table (:func:`settings_table`: ``{"kind": ..., **settings}``)."""
    return value if isinstance(value, str) else settings_table(value, MANIFOLDS)


def manifold_label(value) -> str:
    """A ``manifold`` setting for messages and titles: the name, followed by the settings that
    differ from the class's defaults, e.g. ``cube (sigma=0.03)``."""
    if isinstance(value, str):
        return value
    defaults = {s.name: s.default for s in settings_of(type(value))}
    changed = [f"{k}={v!r}" for k, v in setting_values(value).items() if not _same(v, defaults.get(k))]
    name = MANIFOLDS.name_of(value)
    return f"{name} ({', '.join(changed)})" if changed else name


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, RuntimeError):  # e.g. tensors of other shapes
        return False
