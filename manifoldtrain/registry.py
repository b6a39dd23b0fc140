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
from manifoldtrain.manifold import Manifold
from manifoldtrain.manifolds import Cube, PhaseRetrieval
from manifoldtrain.nn import ACTIVATIONS, ConvNetConfig, MLPConfig
from manifoldtrain.data.sources import DataSource, InMemorySource, OnTheFlySource, ShardedCacheSource
from manifoldtrain.objectives import (
    DerivativeTerm, HessianOracleTerm, JacobianInvarianceTerm, NoiseInvarianceTerm, OracleTerm, Term, ValueTerm,
)

__all__ = ["Registry", "MANIFOLDS", "MODELS", "ACTIVATIONS", "TERMS", "SOURCES"]


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
