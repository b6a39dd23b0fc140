"""Objective terms that compose into one training objective.

A term compares part of the network's jet along the manifold with the target's jet:

* :class:`ValueTerm`: :math:`N(x)` against :math:`y`;
* :class:`DerivativeTerm` of order 1: :math:`N'(x) x_i` against :math:`y_i` for every
  coordinate ``i``, or along ``k`` random directions :math:`v` (:math:`x_v = \\sum_i v_i x_i`);
* :class:`DerivativeTerm` of order 2: :math:`N''(x)[x_i, x_j] + N'(x) x_{ij}` against
  :math:`y_{ij}` for every pair, or along random directions (:math:`x_{vv}`).

Balancing the orders
--------------------
Each derivative brings a factor of about :math:`1/\\sigma` (for the cube :math:`|x| \\le 1`,
:math:`|x_i| \\sim 14`, :math:`|x_{ij}| \\sim 300`), so raw squared errors of different orders
differ by orders of magnitude, and different coordinates (translations, rotations) by
factors of 50. :class:`LossScales`, computed once from the training data, fixes both:

1. **units of** :math:`\\theta`: coordinate ``i`` is rescaled by :math:`s_i = 1/\\mathrm{rms}(x_i)`
   (inputs and targets alike, :math:`x_i \\to s_i x_i`, :math:`x_{ij} \\to s_i s_j x_{ij}`), so
   that every coordinate moves the input equally;
2. **relative errors**: each term is its mean squared error divided by the mean square of
   its target (the variance for values), computed on the training data.

A term's loss is then the fraction of its target's energy left unexplained, and weight 1 on
every term means "every order counts equally". Weights still multiply each term.

Random directions :math:`v \\sim N(0, I)` per sample and step give an unbiased estimate of
the first-order loss (:math:`E[(e \\cdot v)^2] = |e|^2`); for the second order,
:math:`E[(v^T E v)^2] = 2|E|_F^2 + (\\operatorname{tr} E)^2`, a different positive quadratic form
with the same minimiser :math:`E = 0`.
"""

from __future__ import annotations

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.jet import Jet, triu_pairs
from manifoldtrain.network_jets import directional_network_jet, network_jet

__all__ = ["ValueTerm", "DerivativeTerm", "Objective", "LossScales"]


@attrs.frozen
class ValueTerm:
    """:math:`N(x)` against :math:`y`, relative to the target variance.

    Attributes
    ----------
    weight : float
        Multiplies the term (>= 0).
    """

    weight: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True))

    order = 0

    @property
    def name(self) -> str:
        return "value"


def _check_order(instance, attribute, value):
    check_int(attribute.name, value, minimum=1, maximum=2)


def _check_directions(instance, attribute, value):
    if value is not None:
        check_int(attribute.name, value, minimum=1)


@attrs.frozen
class DerivativeTerm:
    """Derivatives of order 1 or 2 along the manifold against the target's.

    Attributes
    ----------
    order : int
        1 (:math:`N'(x) x_i`) or 2 (:math:`N''(x)[x_i, x_j] + N'(x) x_{ij}`).
    weight : float
        Multiplies the term (>= 0).
    directions : int or None
        ``None``: every coordinate (order 1) or pair (order 2). ``k``: ``k`` random directions
        per sample and step instead (cheaper, an estimate of the same loss).
    """

    order: int = attrs.field(validator=_check_order)
    weight: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True))
    directions: int | None = attrs.field(default=None, validator=_check_directions)

    @property
    def name(self) -> str:
        kind = "full" if self.directions is None else f"{self.directions} random"
        return f"d{self.order} ({kind})"


def _check_terms(instance, attribute, value):
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name}: expected a non-empty tuple of ValueTerm/DerivativeTerm, got {value!r}")
    for t in value:
        if not isinstance(t, (ValueTerm, DerivativeTerm)):
            raise TypeError(f"{attribute.name}: expected ValueTerm or DerivativeTerm items, got {type(t).__name__}")
    if len({t.name for t in value}) != len(value):
        raise ValueError(f"{attribute.name}: each term may appear once, got {[t.name for t in value]}")
    ks = {t.directions for t in value if isinstance(t, DerivativeTerm) and t.directions is not None}
    if len(ks) > 1:
        raise ValueError(f"{attribute.name}: random-direction terms must share one number of directions, got {sorted(ks)}")


@attrs.frozen
class LossScales:
    """Units of the local coordinates and the target energy of every term (see the module doc).

    Attributes
    ----------
    coordinate : tuple of float
        :math:`s_i`, ``d`` of them: derivatives along coordinate ``i`` are multiplied by ``s_i``.
    value, d1, d2 : float
        Mean square of the (centred) target value, of the scaled first and of the scaled second
        derivatives (all pairs ``i <= j``, off-diagonal ones counted twice, as in a full matrix).
    d1_random, d2_random : float
        The same along a random direction :math:`v \\sim N(0, I)` (expected values).
    """

    coordinate: tuple[float, ...] = attrs.field(converter=tuple)
    value: float
    d1: float
    d2: float
    d1_random: float
    d2_random: float

    @classmethod
    def from_data(cls, inputs: Jet, targets: Jet) -> LossScales:
        """Compute the scales from training jets (of order 1 or 2)."""
        if inputs.order < 1:
            raise ValueError("inputs: loss scales need jets of order >= 1")
        d = inputs.param_dim
        x1 = inputs.d1.double().transpose(0, 1).reshape(d, -1)
        rms = x1.pow(2).mean(1).sqrt().clamp_min(1e-300)
        s = 1.0 / rms
        y = targets.value.double()
        value = float((y - y.mean(0)).pow(2).mean())
        y1 = targets.d1.double() * s.reshape(1, d, *([1] * (y.dim() - 1)))
        d1 = float(y1.pow(2).mean())
        d1_random = d1 * d  # E[(sum_i v_i y_i)^2] = sum_i y_i^2
        d2 = d2_random = 0.0
        if inputs.order == 2:
            i, j = triu_pairs(d)
            y2 = targets.d2.double() * (s[i] * s[j]).reshape(1, -1, *([1] * (y.dim() - 1)))
            off = (i != j).double().reshape(1, -1, *([1] * (y.dim() - 1)))
            full = (y2.pow(2) * (1 + off)).sum(1).mean()  # sum over the full d x d matrix
            d2 = float(full / d**2)
            diag = y2[:, i == j].sum(1)  # trace
            d2_random = float(2 * full + diag.pow(2).mean())  # E[(v^T Y v)^2] for v ~ N(0, I)
        eps = 1e-300
        return cls(tuple(s.tolist()), max(value, eps), max(d1, eps), max(d2, eps), max(d1_random, eps), max(d2_random, eps))

    def scale_jet(self, jet: Jet) -> Jet:
        """Express a jet's derivatives in the scaled coordinates."""
        if jet.order == 0:
            return jet
        s = torch.tensor(self.coordinate, dtype=jet.dtype, device=jet.device)
        tail = [1] * (jet.value.dim() - 1)
        parts = [jet.value, jet.d1 * s.reshape(1, -1, *tail)]
        if jet.order == 2:
            i, j = triu_pairs(len(s), device=jet.device)
            parts.append(jet.d2 * (s[i] * s[j]).reshape(1, -1, *tail))
        return Jet(*parts)


@attrs.frozen
class Objective:
    """A weighted sum of terms, evaluated from one pass of the network's jet.

    Build one from terms, or use :meth:`value`, :meth:`first_order`, :meth:`second_order`.

    Examples
    --------
    >>> Objective.second_order().names
    ('value', 'd1 (full)', 'd2 (full)')
    >>> Objective((ValueTerm(), DerivativeTerm(2, weight=0.5, directions=2))).max_order
    2
    """

    terms: tuple = attrs.field(converter=tuple, validator=_check_terms)

    @classmethod
    def value(cls) -> Objective:
        """Fit values only (conventional training)."""
        return cls((ValueTerm(),))

    @classmethod
    def first_order(cls, directions: int | None = None) -> Objective:
        """Values and first derivatives, equally weighted."""
        return cls((ValueTerm(), DerivativeTerm(1, directions=directions)))

    @classmethod
    def second_order(cls, directions: int | None = None) -> Objective:
        """Values, first and second derivatives, equally weighted."""
        return cls((ValueTerm(), DerivativeTerm(1, directions=directions), DerivativeTerm(2, directions=directions)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def max_order(self) -> int:
        return max(t.order for t in self.terms)

    @property
    def random_directions(self) -> int | None:
        """Directions per sample if every derivative term is a random-direction one, else None."""
        ds = [t for t in self.terms if isinstance(t, DerivativeTerm)]
        if ds and all(t.directions is not None for t in ds):
            return ds[0].directions
        return None

    def losses(
        self,
        model: torch.nn.Sequential,
        inputs: Jet,
        targets: Jet,
        scales: LossScales,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each term's weighted loss on a batch, by name (their sum is the objective).

        Runs one Taylor-mode pass: the full jet up to :attr:`max_order`, or, when every
        derivative term uses random directions, ``1 + 2k`` rows along ``k`` directions drawn
        from ``generator``.
        """
        order = self.max_order
        x = scales.scale_jet(inputs.truncate(order))
        y = scales.scale_jet(targets.truncate(order))
        k = self.random_directions
        ks = [t.directions for t in self.terms if isinstance(t, DerivativeTerm) and t.directions is not None]
        v = None
        if ks:
            v = torch.randn(len(x), ks[0], x.param_dim, generator=generator, dtype=torch.float64).to(x.value)
        if order == 0:
            value = model(x.value)
        elif k is None:  # one full pass; random-direction terms (if any) contract it
            pred = network_jet(model, x)
            value = pred.value
            if v is not None:
                p1, p2 = pred.directional(v)
        else:  # 1 + 2k rows only
            value, p1, p2 = directional_network_jet(model, x, v)
        if v is not None:
            t1, t2 = y.directional(v)
        d = inputs.param_dim or 1
        out: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if isinstance(term, ValueTerm):
                loss = (value - y.value).pow(2).mean() / scales.value
            elif term.directions is None:
                if term.order == 1:
                    loss = (pred.d1 - y.d1).pow(2).mean() / scales.d1
                else:
                    i, j = triu_pairs(d, device=x.device)
                    off = (i != j).to(x.value).reshape(1, -1, *([1] * (pred.d2.dim() - 2)))
                    sq = ((pred.d2 - y.d2).pow(2) * (1 + off)).sum(1)  # the full d x d matrix
                    loss = sq.mean() / (d * d) / scales.d2
            elif term.order == 1:
                loss = (p1 - t1).pow(2).mean() / scales.d1_random
            else:
                loss = (p2 - t2).pow(2).mean() / scales.d2_random
            out[term.name] = term.weight * loss
        return out
