"""manifoldtrain: train networks on the derivatives of a smooth, computable data manifold."""

from manifoldtrain.jet import Jet, num_pairs, pair_index, triu_pairs
from manifoldtrain.manifold import Manifold, chart_jet
from manifoldtrain import manifolds

__version__ = "0.1.0"

__all__ = ["Jet", "Manifold", "chart_jet", "manifolds", "num_pairs", "pair_index", "triu_pairs", "__version__"]
