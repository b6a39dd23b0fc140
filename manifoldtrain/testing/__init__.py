"""Checks for any :class:`~manifoldtrain.Manifold`, public so users check their own manifolds
the way the bundled ones are checked.

* :func:`check_manifold` runs everything below on a few sampled points.
* :func:`finite_difference_jets` and :func:`check_finite_differences`: jets against central
  differences in float64, with Ridders' step control and error estimates.
* :func:`check_default_jets`: analytic ``jets`` overrides against the ``torch.func`` default.
* :func:`check_batching`, :func:`check_conventions`: batch equals one-by-one; shapes, dtypes
  and devices follow the library's convention.
* :func:`check_move`: :meth:`~manifoldtrain.Manifold.move` re-centres the chart.
* :func:`check_activation`: a :class:`~manifoldtrain.nn.SmoothActivation`'s closed-form
  derivatives against central differences of its ``forward``.
* :func:`verify_manifold`: the cheap check (conventions on two points) that runs and
  commands apply to a user's manifold before making data from it.
* :mod:`manifoldtrain.testing.strategies`: hypothesis strategies for valid points.
"""

from manifoldtrain.testing._activations import check_activation
from manifoldtrain.testing._checks import (
    CheckReport,
    Discrepancy,
    FiniteDifferenceJets,
    check_batching,
    check_conventions,
    check_default_jets,
    check_finite_differences,
    check_manifold,
    check_move,
    compare_jets,
    finite_difference_jets,
    verify_manifold,
)

__all__ = [
    "CheckReport",
    "Discrepancy",
    "FiniteDifferenceJets",
    "check_activation",
    "check_batching",
    "check_conventions",
    "check_default_jets",
    "check_finite_differences",
    "check_manifold",
    "check_move",
    "compare_jets",
    "finite_difference_jets",
    "verify_manifold",
]
