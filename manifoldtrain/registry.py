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

import importlib

from manifoldtrain._plain import qualified_name
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.nn import SMOOTH_ACTIVATIONS, ConvNetConfig, MLPConfig, SmoothActivation
from manifoldtrain.sources import DataSource, InMemorySource, OnTheFlySource, ShardedCacheSource
from manifoldtrain.objectives import (
    DerivativeTerm, HessianOracleTerm, JacobianInvarianceTerm, NoiseInvarianceTerm, OracleTerm, Term, ValueTerm,
)

__all__ = ["Registry", "MANIFOLDS", "MODELS", "ACTIVATIONS", "TERMS", "SOURCES"]


class Registry:
    """Classes of one kind by name.

    Parameters
    ----------
    what : str
        What the classes are (for messages), e.g. ``"manifold"``.
    base : type or None
        Every class must subclass it (``None``: any class).
    """

    def __init__(self, what: str, base: type | None = None):
        self.what = what
        self.base = base
        self._classes: dict[str, type] = {}

    def register(self, name: str, cls: type) -> type:
        """Give ``cls`` the short ``name``; returns ``cls``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"name: expected a non-empty {self.what} name without ':', got {name!r}")
        self._check_class(cls, name)
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"name: {name!r} is already the {self.what} {qualified_name(self._classes[name])}")
        self._classes[name] = cls
        return cls

    def _check_class(self, cls: object, kind: str) -> type:
        if not isinstance(cls, type) or (self.base is not None and not issubclass(cls, self.base)):
            base = f"a subclass of {self.base.__name__}" if self.base is not None else "a class"
            raise TypeError(f"kind: {kind!r} is not {base} (got {cls!r})")
        return cls

    @property
    def names(self) -> list[str]:
        """The registered short names, sorted."""
        return sorted(self._classes)

    def get(self, kind: object) -> type:
        """The class called ``kind``: a short name, or ``"package.module:ClassName"``."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind: expected one of {self.names} or 'package.module:ClassName', got {kind!r}")
        if kind in self._classes:
            return self._classes[kind]
        if ":" not in kind:
            raise ValueError(f"kind: unknown {self.what} {kind!r}; expected one of {self.names} or 'package.module:ClassName'")
        module_name, _, attr = kind.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"kind: cannot import module {module_name!r} for {self.what} {kind!r} ({err}); is it on the path?") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"kind: module {module_name!r} has no {attr!r} (for {self.what} {kind!r})")
            obj = getattr(obj, part)
        return self._check_class(obj, kind)

    def name_of(self, cls_or_instance: object) -> str:
        """The short name of a class (or of an instance's class), else its import path."""
        cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
        for name, known in self._classes.items():
            if known is cls:
                return name
        return qualified_name(cls)


#: Manifolds by name: ``cube``, ``phase-retrieval``.
MANIFOLDS = Registry("manifold", Manifold)
MANIFOLDS.register("cube", Cube)
MANIFOLDS.register("phase-retrieval", PhaseRetrieval)

#: Network configs by name: ``mlp``, ``convnet``.
MODELS = Registry("model")
MODELS.register("mlp", MLPConfig)
MODELS.register("convnet", ConvNetConfig)

#: Smooth activations by name, for ``activation = ...`` of the bundled model configs:
#: ``tanh``, ``sigmoid``, ``softplus``, ``gelu``, ``silu``, ``sine`` (:data:`~manifoldtrain.nn.SMOOTH_ACTIVATIONS`),
#: or ``"package.module:ClassName"`` of any :class:`~manifoldtrain.nn.SmoothActivation` subclass
#: (built without arguments).
ACTIVATIONS = Registry("activation", SmoothActivation)
for _name, _cls in SMOOTH_ACTIVATIONS.items():
    ACTIVATIONS.register(_name, _cls)

#: Objective terms by name: ``value``, ``derivative``, ``invariance-noise``,
#: ``invariance-jacobian``, ``oracle``, ``oracle-hessian``.
TERMS = Registry("term", Term)
TERMS.register("value", ValueTerm)
TERMS.register("derivative", DerivativeTerm)
TERMS.register("invariance-noise", NoiseInvarianceTerm)
TERMS.register("invariance-jacobian", JacobianInvarianceTerm)
TERMS.register("oracle", OracleTerm)
TERMS.register("oracle-hessian", HessianOracleTerm)

#: Data sources by name, for ``[data] source = ...`` in TOML configs: ``memory``,
#: ``shards``, ``on-the-fly``, or ``"package.module:ClassName"`` of any DataSource subclass.
SOURCES = Registry("data source", DataSource)
SOURCES.register("memory", InMemorySource)
SOURCES.register("shards", ShardedCacheSource)
SOURCES.register("on-the-fly", OnTheFlySource)
