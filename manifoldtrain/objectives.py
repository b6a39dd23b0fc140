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

Random directions :math:`v` are drawn uniformly on the sphere of radius :math:`\\sqrt d` per
sample and step (:func:`random_directions`): :math:`E[v v^T] = I`, so the first-order loss
is estimated without bias (:math:`E[(e \\cdot v)^2] = |e|^2`); for the second order,
:math:`E[(v^T E v)^2] = \\frac{d}{d+2}(2|E|_F^2 + (\\operatorname{tr} E)^2)`, a different positive
quadratic form with the same minimiser :math:`E = 0`. The sphere avoids the heavy tail
that Gaussian directions give :math:`(v^T E v)^2` (a fourth power of :math:`|v|`).
"""

from __future__ import annotations

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.jet import Jet, triu_pairs
from manifoldtrain.network_jets import directional_network_jet, network_jet

__all__ = ["ValueTerm", "DerivativeTerm", "Objective", "LossScales", "random_directions"]


def random_directions(n: int, k: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, k, d]`` float64 directions, uniform on the sphere of radius ``sqrt(d)`` (``E[v v^T] = I``)."""
    g = torch.randn(n, k, d, generator=generator, dtype=torch.float64)
    return g * (d**0.5 / g.norm(dim=-1, keepdim=True).clamp_min(1e-300))


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
    start : float
        Fraction of the training budget (0..1) after which the term joins the objective
        (default 0: from the start). A curriculum: cheaper terms converge first, and steps
        before ``start`` skip this term's jet rows.
    """

    order: int = attrs.field(validator=_check_order)
    weight: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True))
    directions: int | None = attrs.field(default=None, validator=_check_directions)
    start: float = attrs.field(default=0.0, validator=attrs_validator(check_float, nonnegative=True, maximum=1.0))

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
    if all(getattr(t, "start", 0.0) > 0 for t in value):
        raise ValueError(f"{attribute.name}: at least one term must start at 0")
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
        The same along a random direction (:func:`random_directions`; expected values).
    """

    coordinate: tuple[float, ...] = attrs.field(converter=tuple)
    value: float
    d1: float
    d2: float
    d1_random: float
    d2_random: float

    @classmethod
    def from_data(cls, inputs: Jet, targets: Jet, *, chunk_size: int = 256) -> LossScales:
        """Compute the scales from training jets (of order 1 or 2), ``chunk_size`` samples at a
        time in float64 (memory stays bounded for large data sets)."""
        if inputs.order < 1:
            raise ValueError("inputs: loss scales need jets of order >= 1")
        n, d = len(inputs), inputs.param_dim
        tail = [1] * (targets.value.dim() - 1)
        chunks = [slice(k, k + chunk_size) for k in range(0, n, chunk_size)]
        # Pass 1: rms of the input derivatives per coordinate, and the target mean.
        sq = torch.zeros(d, dtype=torch.float64)
        y_sum = torch.zeros(targets.shape, dtype=torch.float64)
        for sl in chunks:
            x1 = inputs.d1[sl].double().cpu()
            sq += x1.transpose(0, 1).reshape(d, -1).pow(2).sum(1)
            y_sum += targets.value[sl].double().cpu().sum(0)
        s = 1.0 / (sq / (n * inputs.value[0].numel())).sqrt().clamp_min(1e-300)  # per coordinate, over samples and pixels
        y_mean = y_sum / n
        # Pass 2: mean squares of the centred values and the scaled derivatives.
        acc = {"value": 0.0, "d1": 0.0, "full": 0.0, "trace": 0.0}
        if inputs.order == 2:
            i, j = triu_pairs(d)
            ss = (s[i] * s[j]).reshape(1, -1, *tail)
            off = (i != j).double().reshape(1, -1, *tail)
        for sl in chunks:
            acc["value"] += float((targets.value[sl].double().cpu() - y_mean).pow(2).sum())
            acc["d1"] += float((targets.d1[sl].double().cpu() * s.reshape(1, d, *tail)).pow(2).sum())
            if inputs.order == 2:
                y2 = targets.d2[sl].double().cpu() * ss
                acc["full"] += float((y2.pow(2) * (1 + off)).sum())  # the full d x d matrix
                acc["trace"] += float(y2[:, i == j].sum(1).pow(2).sum())
        m = targets.value.numel()  # samples x outputs
        value, d1 = acc["value"] / m, acc["d1"] / (m * d)
        d1_random = d1 * d  # E[(sum_i v_i y_i)^2] = sum_i y_i^2 since E[v v^T] = I
        d2 = d2_random = 0.0
        if inputs.order == 2:
            full, trace2 = acc["full"] / m, acc["trace"] / m
            d2 = full / d**2
            # E[(v^T Y v)^2] for v uniform on the sphere of radius sqrt(d)
            d2_random = (2 * full + trace2) * d / (d + 2)
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
    >>> [t.weight for t in Objective.second_order().terms]
    [1.0, 1.0, 0.03]
    >>> Objective((ValueTerm(), DerivativeTerm(2, weight=0.5, directions=2))).max_order
    2
    """

    terms: tuple = attrs.field(converter=tuple, validator=_check_terms)

    @classmethod
    def value(cls) -> Objective:
        """Fit values only (conventional training)."""
        return cls((ValueTerm(),))

    @classmethod
    def first_order(cls, weights: tuple[float, float] = (1.0, 1.0), directions: int | None = None) -> Objective:
        """Values and first derivatives (relative terms, weights ``(value, d1)``)."""
        return cls((ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions)))

    @classmethod
    def second_order(
        cls, weights: tuple[float, float, float] = (1.0, 1.0, 0.03), directions: int | None = None
    ) -> Objective:
        """Values, first and second derivatives (relative terms, weights ``(value, d1, d2)``).

        The default 0.03 on the second-order term was the best of 1, 0.3, 0.1, 0.03 and 0.01
        for the cube (1000 samples, tanh MLP 3x256, 150 s; test RMSE 5.8e-2, 2.1e-2, 1.1e-2,
        8.9e-3, 9.2e-3): the second-order term's gradients are much larger than the others' at
        equal relative loss and, at weight 1, swamp Adam's step sizes for them.
        """
        return cls(
            (ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions),
             DerivativeTerm(2, weights[2], directions=directions))
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def max_order(self) -> int:
        return max(t.order for t in self.terms)

    @property
    def directions(self) -> int | None:
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
        *,
        jet_fn=network_jet,
        progress: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Each term's weighted loss on a batch, by name (their sum is the objective).

        Runs one Taylor-mode pass: the full jet up to :attr:`max_order`, or, when every
        derivative term uses random directions, ``1 + 2k`` rows along ``k`` directions drawn
        from ``generator``. ``jet_fn`` computes full jets (default
        :func:`~manifoldtrain.network_jets.network_jet`; pass
        :func:`~manifoldtrain.network_jets.network_jet_nested` for the reference path).
        ``progress`` (0..1, the fraction of the training budget spent) leaves out terms whose
        ``start`` lies ahead; they report a loss of 0.
        """
        active = [t for t in self.terms if getattr(t, "start", 0.0) <= progress]
        if not active:
            raise ValueError(f"progress: no term is active at {progress} (every term starts later)")
        view = Objective(tuple(active))
        losses = view._active_losses(model, inputs, targets, scales, generator, jet_fn)
        return {t.name: losses.get(t.name, torch.zeros((), dtype=inputs.dtype, device=inputs.device)) for t in self.terms}

    def _active_losses(self, model, inputs, targets, scales, generator, jet_fn) -> dict[str, torch.Tensor]:
        order = self.max_order
        x = scales.scale_jet(inputs.truncate(order))
        y = scales.scale_jet(targets.truncate(order))
        k = self.directions
        ks = [t.directions for t in self.terms if isinstance(t, DerivativeTerm) and t.directions is not None]
        v = None
        if ks:
            v = random_directions(len(x), ks[0], x.param_dim, generator).to(x.value)
        if order == 0:
            value = model(x.value)
        elif k is None:  # one full pass; random-direction terms (if any) contract it
            pred = jet_fn(model, x)
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
