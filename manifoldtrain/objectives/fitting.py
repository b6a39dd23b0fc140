"""Fitting terms: the network's jet along the manifold against the target's.

* :class:`ValueTerm`: :math:`N(x)` against :math:`y`;
* :class:`DerivativeTerm` of order 1: :math:`N'(x)\\, x_i` against :math:`y_i` for every
  coordinate, or along ``k`` random directions :math:`u` (:math:`x_u = \\sum_i u_i x_i`);
* :class:`DerivativeTerm` of order 2: :math:`N''(x)[x_i, x_j] + N'(x)\\, x_{ij}` against
  :math:`y_{ij}` for every pair, or along ``k`` pairs of independent random directions
  :math:`(u, v)`, the mixed derivative :math:`N''(x)[x_u, x_v] + N'(x)\\, x_{uv}` against
  :math:`y_{uv} = \\sum_{ij} u_i v_j y_{ij}`.

Every term is relative: its mean squared error divided by the energy of its target in the
training data (:class:`~manifoldtrain.data.statistics.LossScales`, in scaled coordinates), so
that weight 1 on every term means "every order counts equally".

Random directions, unbiased
---------------------------
With :math:`E[u u^T] = I` (:func:`~manifoldtrain.objectives.random_directions`) and ``u``,
``v`` independent, :math:`E[(e \\cdot u)^2] = |e|^2` and :math:`E[(u^T E v)^2] = |E|_F^2`, so
the random-direction term of order ``k``, :math:`\\overline{(\\ldots)^2} / d^k`, has the full
term's value as its mean, with the same normaliser: both report the same number in
expectation. (The square form :math:`v^T E v` would not: over the sphere its mean is
:math:`\\frac{d}{d+2}(2|E|_F^2 + (\\operatorname{tr} E)^2)`, another loss.) Order 1 costs
``k`` jet rows, order 2 ``3k`` (:math:`x_u, x_v, x_{uv}`); the two terms of
:meth:`~manifoldtrain.objectives.Objective.second_order` share the ``u`` rows.
"""

from __future__ import annotations

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.jet import pair_weights, triu_pairs
from manifoldtrain.objectives.core import Batch, LossScales, Rows, Term

__all__ = ["ValueTerm", "DerivativeTerm"]


def _check_scale(instance, attribute, value):
    if value is not None:
        check_float(attribute.name, value, positive=True)


#: The largest term weight: weights are relative (scale them so the largest is about 1); a huge
#: one overflows the loss to infinity at the first step instead of failing clearly.
MAX_WEIGHT = 1e6


@attrs.frozen
class ValueTerm(Term):
    """:math:`N(x)` against :math:`y`, relative to the target variance.

    Attributes
    ----------
    weight : float
        Multiplies the term (>= 0).
    scale : float or None
        Divides the mean squared error (> 0). ``None`` (default): the variance of the training
        targets (:meth:`LossScales.target_energy`, which handles constant targets).
    """

    weight: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True, maximum=MAX_WEIGHT))
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    data_order = 0

    @property
    def name(self) -> str:
        return "value"

    def loss(self, batch: Batch, rows: Rows | None) -> torch.Tensor:
        return (batch.value - batch.targets.value).pow(2).mean()

    def normaliser(self, scales: LossScales) -> float:
        return self.scale if self.scale is not None else scales.target_energy(0, self.name)


def _check_order(instance, attribute, value):
    check_int(attribute.name, value, minimum=1, maximum=2)


#: The most random directions (pairs) a derivative term may draw per sample: far more than any
#: manifold has coordinates or pairs; a huge count would be allocated before failing.
MAX_DIRECTIONS = 65536


def _check_directions(instance, attribute, value):
    if value is not None:
        check_int(attribute.name, value, minimum=1, maximum=MAX_DIRECTIONS)


def _check_bool(instance, attribute, value):
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected True or False, got {value!r}")


@attrs.frozen
class DerivativeTerm(Term):
    """Derivatives of order 1 or 2 along the manifold against the target's.

    Attributes
    ----------
    order : int
        1 (:math:`N'(x)\\, x_i`) or 2 (:math:`N''(x)[x_i, x_j] + N'(x)\\, x_{ij}`).
    weight : float
        Multiplies the term (>= 0).
    directions : int or None
        ``None``: every coordinate (order 1) or pair (order 2). ``k``: ``k`` random directions
        (order 1) or pairs of independent directions (order 2) per sample and step instead:
        an unbiased estimate of the full term (the same loss in expectation), at ``k`` or
        ``3k`` jet rows instead of ``d`` or ``d(d+1)/2``.
    grid : bool
        Order 2 with ``directions=k`` only: instead of ``k`` pairs ``(u_a, v_a)``, every pair
        ``(u_a, v_b)`` of ``k`` directions ``u`` and ``k`` independent directions ``v``: ``k**2``
        mixed derivatives from ``2k`` first-order rows (``2k + k**2`` jet rows, 1 + 2/k rows a
        pair instead of 3). Each pair is still an independent ``u`` and ``v``, so the estimate
        stays unbiased, and with ``k = d`` (orthogonal directions) it is the full term exactly.
    start : float
        Fraction of the training budget (0..1) after which the term joins the objective
        (default 0: from the start). A curriculum: cheaper terms converge first, and steps
        before ``start`` skip this term's jet rows.
    scale : float or None
        Divides the mean squared error (> 0). ``None`` (default): the energy of the training
        targets' derivatives of this order (:meth:`LossScales.target_energy`, which falls back
        to a reference scale where they vanish, e.g. for targets linear in the coordinates).
    """

    order: int = attrs.field(validator=_check_order)
    weight: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True, maximum=MAX_WEIGHT))
    directions: int | None = attrs.field(default=None, validator=_check_directions)
    start: float = attrs.field(default=0.0, validator=attrs_validator(check_float, nonnegative=True, maximum=1.0))
    scale: float | None = attrs.field(default=None, validator=_check_scale)
    grid: bool = attrs.field(default=False, validator=_check_bool)

    def __attrs_post_init__(self):
        if self.grid and (self.order != 2 or self.directions is None):
            raise ValueError(f"grid: only for order 2 with random directions (order={self.order}, "
                             f"directions={self.directions}); the grid is of the pairs of directions")

    @property
    def name(self) -> str:
        if self.directions is None:
            kind = "full"
        else:
            kind = f"{self.directions}x{self.directions} grid" if self.grid else f"{self.directions} random"
        return f"d{self.order} ({kind})"

    @property
    def data_order(self) -> int:
        return self.order

    def normaliser(self, scales: LossScales) -> float:
        if self.scale is not None:
            return self.scale
        if scales.order < self.order:
            raise ValueError(f"{self.name}: the training data holds jets of order {scales.order}, this term needs {self.order}")
        return scales.target_energy(self.order, self.name)

    def request(self, batch: Batch) -> Rows:
        x, k = batch.inputs, self.directions
        if k is None:
            if self.order == 1:
                return Rows(x.d1)
            return Rows(x.d1, x.d2, torch.stack(triu_pairs(batch.param_dim), dim=1))
        u = batch.directions(k, 0)
        if self.order == 1:
            return Rows(batch.along(u), state=(u,))
        v = batch.directions(k, 1)
        if self.grid:  # every (u_a, v_b): a-major
            a, b = torch.arange(k).repeat_interleave(k), torch.arange(k).repeat(k)
            uu, vv = u[:, a], v[:, b]
            pairs = torch.stack([a, k + b], dim=1)
            return Rows((batch.along(u), batch.along(v)), batch.mixed(uu, vv), pairs, state=(uu, vv))
        pairs = torch.stack([torch.arange(k), torch.arange(k, 2 * k)], dim=1)
        return Rows((batch.along(u), batch.along(v)), batch.mixed(u, v), pairs, state=(u, v))

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        y, d = batch.targets, batch.param_dim
        if self.directions is None:
            if self.order == 1:
                return (rows.out_first - y.d1).pow(2).mean()
            err = (rows.out_second - y.d2).pow(2)
            w = pair_weights(d, err.device, err.dtype).reshape(1, -1, *([1] * (err.dim() - 2)))
            return (err * w).sum(1).mean() / d**2  # the mean over the full d x d matrix
        if self.order == 1:
            (u,) = rows.state
            return (rows.out_first - y.along(u)).pow(2).mean() / d
        u, v = rows.state
        return (rows.out_second - y.mixed(u, v)).pow(2).mean() / d**2
