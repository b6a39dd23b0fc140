"""Robustness: the oracle, the error operator, attacks and robustness metrics.

* :mod:`~manifoldtrain.robustness.oracle`: the Taylor oracle (orders 1 and 2) and the exact
  oracle (nearest point on the manifold by Gauss-Newton);
* :mod:`~manifoldtrain.robustness.operator`: the error operator :math:`E = N'(x) - Y J^+`, its
  invariance and sensitivity parts, and its spectral norm;
* :mod:`~manifoldtrain.robustness.evaluation`: noisy RMSE against the exact oracle, worst-case
  amplification, adversarial error by projected gradient ascent, as functions and as Trainer
  metrics;
* :mod:`~manifoldtrain.robustness.suite`: the comparison of value, invariance and oracle
  training (``manifoldtrain robustness``, ``benchmarks/robustness.py``).

The objective terms that train for robustness (invariance, the conventional baseline, and
oracle training) are in :mod:`manifoldtrain.objectives.robust`.
"""

from manifoldtrain.robustness.evaluation import (
    Amplification, Robustness, RobustnessMetrics, adversarial_error, amplification, evaluate_robustness,
    invariant_amplification, noisy_rmse,
)
from manifoldtrain.robustness.operator import ErrorOperator, SpectralNorm, detached, spectral_norm
from manifoldtrain.robustness.oracle import (
    FocalDistance, LinearisedOracle, OracleError, OracleResult, exact_oracle, focal_distance, projection_hessian,
    taylor_oracle,
)

__all__ = [
    "LinearisedOracle", "taylor_oracle", "exact_oracle", "OracleResult", "OracleError", "projection_hessian",
    "focal_distance", "FocalDistance",
    "ErrorOperator", "SpectralNorm", "spectral_norm", "detached",
    "Amplification", "amplification", "invariant_amplification", "noisy_rmse", "adversarial_error", "RobustnessMetrics", "evaluate_robustness",
    "Robustness",
]
