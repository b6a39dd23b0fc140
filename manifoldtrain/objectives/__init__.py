"""Objective terms that compose into one training objective.

:mod:`manifoldtrain.objectives.core` holds the term protocol (:class:`Term`, :class:`Rows`,
:class:`Batch`), the training data's statistics (:class:`LossScales`) and the
:class:`Objective`; :mod:`manifoldtrain.objectives.fitting` the fitting terms
(:class:`ValueTerm`, :class:`DerivativeTerm`); :mod:`manifoldtrain.objectives.robust` the
robustness terms (:class:`NoiseInvarianceTerm`, :class:`AdversarialInvarianceTerm`,
:class:`JacobianInvarianceTerm`: the conventional invariance baseline; :class:`OracleTerm`, :class:`HessianOracleTerm`: oracle
training).

Balancing the orders
--------------------
Each derivative brings a factor of about :math:`1/\\sigma` (for the cube :math:`|x| \\le 1`,
:math:`|x_i| \\sim 14`, :math:`|x_{ij}| \\sim 300`), so raw squared errors of different orders
differ by orders of magnitude, and different coordinates (translations, rotations) by
factors of 50. :class:`LossScales`, computed once from the training data, fixes both:

1. **units of** :math:`\\theta`: coordinate ``i`` is rescaled by :math:`s_i = 1/\\mathrm{rms}(x_i)`
   (inputs and targets alike, :math:`x_i \\to s_i x_i`, :math:`x_{ij} \\to s_i s_j x_{ij}`), so
   that every coordinate moves the input equally;
2. **relative errors**: each fitting term is its mean squared error divided by the mean
   square of its target (the variance for values) on the training data.

A term's loss is then the fraction of its target's energy left unexplained, and weight 1 on
every term means "every order counts equally". Weights still multiply each term.
"""

from manifoldtrain.data.statistics import LossScales
from manifoldtrain.objectives.core import Batch, Rows, Term, random_directions
from manifoldtrain.objectives.fitting import DerivativeTerm, ValueTerm
from manifoldtrain.objectives.objective import Objective
from manifoldtrain.objectives.robust import (
    AdversarialInvarianceTerm, HessianOracleTerm, JacobianInvarianceTerm, NoiseInvarianceTerm, OracleTerm,
)

__all__ = [
    "Term", "Rows", "Batch", "ValueTerm", "DerivativeTerm", "Objective", "LossScales", "random_directions",
    "NoiseInvarianceTerm", "AdversarialInvarianceTerm", "JacobianInvarianceTerm", "OracleTerm", "HessianOracleTerm",
]
