"""Bundled manifolds."""

from manifoldtrain.manifolds.cube import Cube
from manifoldtrain.manifolds.phase_retrieval import PhaseRetrieval

__all__ = ["Cube", "PhaseRetrieval"]
