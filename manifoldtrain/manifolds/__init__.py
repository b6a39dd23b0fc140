"""Bundled manifolds."""

from manifoldtrain.manifolds.cube import Cube

__all__ = ["Cube"]
