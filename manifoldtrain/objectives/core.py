"""The term protocol, the per-batch context, loss scales and the :class:`Objective`.

An objective is a weighted sum of *terms*. A term declares what it needs, the objective
builds one :class:`Batch` per step and runs **one** pass of the network for every term, and
each term turns its share of that pass into a loss:

1. :meth:`Term.request` (optional) returns the :class:`Rows` it wants from the network:
   first-order rows :math:`N'(x)\\, t_a` for input tangents :math:`t_a` and second-order rows
   :math:`N''(x)[t_a, t_b] + N'(x)\\, t_{ab}` (see :mod:`manifoldtrain.network_jets`). It may
   draw random directions from the batch (:meth:`Batch.directions`, shared between terms).
2. The objective merges every term's rows (blocks that are the same tensor are passed once),
   runs one Taylor-mode pass, and hands each term its rows back with the network's answers
   (:attr:`Rows.out_first`, :attr:`Rows.out_second`); :attr:`Batch.value` is :math:`N(x)`.
3. :meth:`Term.loss` returns the term's loss, and :meth:`Term.normaliser` (computed once,
   from statistics of the training data in :class:`LossScales`) what it is divided by.

The weighted, normalised losses are what :meth:`Objective.losses` returns, by term name.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any

import attrs
import torch

from manifoldtrain._validation import (
    attrs_validator, check_cpu_generator, check_float, check_int, check_tensor, non_finite_sample,
)
from manifoldtrain.jet import Jet, pair_weights, triu_pairs
from manifoldtrain.network_jets import taylor_rows

__all__ = ["Term", "Rows", "Batch", "LossScales", "Objective", "random_directions"]


def random_directions(
    n: int, k: int, d: int, generator: torch.Generator | None = None, *, orthogonal: bool = True
) -> torch.Tensor:
    """``[n, k, d]`` float64 directions, each uniform on the sphere of radius ``sqrt(d)``.

    :math:`E[v v^T] = I`, so :math:`E[(e \\cdot v)^2] = |e|^2` and, for independent ``u`` and
    ``v``, :math:`E[(u^T E v)^2] = |E|_F^2`. The sphere has lighter tails than Gaussian
    directions (the norm is fixed), so the estimates vary less.

    With ``orthogonal`` (the default), the ``k`` directions of a sample are orthogonal to each
    other (rows of a uniformly random rotation, ``d`` at a time): each is still uniform on the
    sphere, so every estimate keeps its mean, but they cannot repeat each other, and the
    spread of an average over them shrinks (for ``k = d`` the first-order estimate is exact).
    """
    check_int("n", n, minimum=1)
    check_int("k", k, minimum=1)
    check_int("d", d, minimum=1)
    check_cpu_generator("generator", generator)
    if not orthogonal or k == 1:
        g = torch.randn(n, k, d, generator=generator, dtype=torch.float64)
        return g * (d**0.5 / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny))
    frames = -(-k // d)
    g = torch.randn(n, frames, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar: a uniformly random rotation
    return q.transpose(-2, -1).reshape(n, frames * d, d)[:, :k] * d**0.5


def _as_blocks(value) -> tuple[torch.Tensor, ...]:
    return (value,) if isinstance(value, torch.Tensor) else tuple(value)


@attrs.frozen(eq=False)
class Rows:
    """The network's jet rows that a term asks for, and (once answered) the network's values.

    Attributes
    ----------
    tangents : Tensor or tuple of Tensor
        First-order input rows :math:`t_a`: one ``[n, r, *input_shape]`` block, or several,
        concatenated along dim 1 in order. A block that is the same tensor object as another
        term's block is passed through the network once (e.g. ``batch.inputs.d1``).
    second : Tensor or None
        ``[n, p, *input_shape]``: second-order input rows :math:`t_{ab}`.
    pairs : Tensor or None
        ``[p, 2]`` long (best on the CPU: the objective reads it): the first-order rows
        ``(a, b)`` (indices into this request's tangents) of each second-order row.
    state : object
        Anything the term wants back in :meth:`Term.loss` (e.g. the directions it drew).
    out_first : Tensor or None
        Filled in by the objective: ``[n, r, *output_shape]``, :math:`N'(x)\\, t_a`.
    out_second : Tensor or None
        Filled in by the objective: ``[n, p, *output_shape]``,
        :math:`N''(x)[t_a, t_b] + N'(x)\\, t_{ab}`.
    """

    tangents: tuple[torch.Tensor, ...] = attrs.field(converter=_as_blocks)
    second: torch.Tensor | None = None
    pairs: torch.Tensor | None = None
    state: Any = None
    out_first: torch.Tensor | None = None
    out_second: torch.Tensor | None = None

    def __attrs_post_init__(self):
        if not self.tangents:
            raise ValueError("tangents: expected at least one block of first-order rows")
        if (self.second is None) != (self.pairs is None):
            raise ValueError("second, pairs: give both (second-order rows and their pairs) or neither")


@attrs.define(eq=False)
class Batch:
    """What every term of an objective sees in one step (built once per step by the objective).

    Attributes
    ----------
    model : nn.Module
        The network being trained.
    inputs, targets : Jet
        The batch's jets in scaled coordinates (:meth:`LossScales.scale_jet`), up to the
        objective's order: ``[n, *input_shape]``, ``[n, d, ...]``, ``[n, d(d+1)/2, ...]``.
    scales : LossScales
    generator : torch.Generator or None
        Draws the batch's random directions: a CPU generator (the draws are moved to the
        batch's device).
    value : Tensor or None
        :math:`N(x)` ``[n, *output_shape]``; set by the objective's pass, before any
        :meth:`Term.loss` runs.
    """

    model: torch.nn.Module
    inputs: Jet
    targets: Jet
    scales: LossScales
    generator: torch.Generator | None = attrs.field(default=None, validator=attrs_validator(check_cpu_generator))
    value: torch.Tensor | None = None
    _directions: dict = attrs.field(factory=dict, init=False, repr=False)
    _cache: dict = attrs.field(factory=dict, init=False, repr=False)  # keeps the keyed tensors alive

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def param_dim(self) -> int:
        """``d``, the number of local coordinates (needs jets of order >= 1)."""
        if self.inputs.param_dim is None:
            raise ValueError("inputs: this batch holds values only (order 0); the objective's terms need no coordinates")
        return self.inputs.param_dim

    def directions(self, k: int, index: int = 0) -> torch.Tensor:
        """The ``index``-th set of ``k`` random directions of this batch, ``[n, k, d]``
        (:func:`random_directions`, drawn on first use, then the same tensor for every term
        that asks: terms that share directions share their jet rows)."""
        key = (k, index)
        if key not in self._directions:
            v = random_directions(len(self), k, self.param_dim, self.generator)
            self._directions[key] = v.to(device=self.inputs.device, dtype=self.inputs.dtype)
        return self._directions[key]

    def along(self, v: torch.Tensor) -> torch.Tensor:
        """The input's first derivatives along ``v`` ``[n, k, d]``, :math:`x_v`
        (:meth:`Jet.along`), cached per tensor ``v``: requests that use it share rows."""
        key = (id(v),)
        if key not in self._cache:
            self._cache[key] = ((v,), self.inputs.along(v))
        return self._cache[key][1]

    def mixed(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The input's mixed second derivatives :math:`x_{uv}` ``[n, k, *input_shape]``
        (:meth:`Jet.mixed`), cached per pair of tensors: requests that use it share rows."""
        key = (id(u), id(v))
        if key not in self._cache:
            self._cache[key] = ((u, v), self.inputs.mixed(u, v))
        return self._cache[key][1]


class Term(abc.ABC):
    """One part of an objective: a loss on the network's jet, with a weight.

    Implementing a new term
    -----------------------
    Write a frozen ``attrs`` class (its fields are its settings: what configs, checkpoints
    and resume compare) that subclasses :class:`Term`.

    **Must** provide:

    * a ``weight`` (float >= 0) attribute, usually a field;
    * :attr:`name` -- unique within an objective; the key of its loss in histories;
    * :meth:`loss` -- the term's loss on a :class:`Batch` (before weight and normaliser).

    **May** provide:

    * :attr:`data_order` -- the jet order of the training data it reads (default 0: values);
    * :meth:`request` -- the network's jet rows it needs (default: none, only :math:`N(x)`);
    * :meth:`normaliser` -- what its loss is divided by (default 1), from the statistics of
      the training data (:class:`LossScales`), so that weight 1 means a loss of order one;
    * a ``start`` field (0..1, default 0): the fraction of the training budget after which
      the term joins (a curriculum; before it, the term reports 0 and requests nothing).

    See :class:`~manifoldtrain.objectives.DerivativeTerm` for a full example and
    ``examples/custom_term.py`` for one of a user's own.
    """

    # Defaults for subclasses: the jet order of the training data the term reads (0, 1 or
    # 2), and the fraction of the training budget after which it joins the objective.
    data_order: int = 0
    start: float = 0.0

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Unique name within an objective (the key of its loss)."""

    def request(self, batch: Batch) -> Rows | None:
        """The network's jet rows this term needs on ``batch`` (default ``None``: none)."""
        return None

    @abc.abstractmethod
    def loss(self, batch: Batch, rows: Rows | None) -> torch.Tensor:
        """The term's loss (a scalar tensor) before weight and normaliser.

        ``rows`` is what :meth:`request` returned, with :attr:`Rows.out_first` and
        :attr:`Rows.out_second` filled in (``None`` if it requested nothing).
        """

    def normaliser(self, scales: LossScales) -> float:
        """What the loss is divided by (default 1), from the training data's statistics."""
        return 1.0


def _check_floats(attribute, values: tuple, positive: bool = False) -> None:
    """Validate a tuple of finite numbers >= 0 (> 0 with ``positive``) of :class:`LossScales`."""
    for k, v in enumerate(values):
        check_float(f"{attribute.name}[{k}]", v, positive=positive, nonnegative=True)


@attrs.frozen
class LossScales:
    """Statistics of the training data that put every term on one scale.

    Computed once from the training jets (:meth:`from_data`), plain data (stored in
    checkpoints).

    Attributes
    ----------
    coordinate : tuple of float
        :math:`s_i = 1/\\mathrm{rms}(x_i)`, ``d`` of them (empty for value-only data): the units
        of the local coordinates, in which every coordinate moves the input equally.
        Derivatives along coordinate ``i`` are multiplied by ``s_i`` (:meth:`scale_jet`).
    energy : tuple of float
        Per order of the (scaled) target jet: the variance of the value; the mean square of a
        first derivative (over samples, coordinates and outputs); the mean square of an entry
        of the full symmetric second-derivative matrix (off-diagonal pairs counted twice).
        May be 0 (targets constant, or linear in the coordinates): see :meth:`target_energy`.
    input_energy : tuple of float
        The same statistics of the (scaled) input jet (per pixel instead of per output).

    Degenerate targets
    ------------------
    A fitting term divides its loss by its target's energy. Where that energy is zero or
    negligible (below ``1e-8`` of the reference below: targets that are constant, or linear
    in the coordinates so that their second derivatives vanish), :meth:`target_energy`
    falls back to the energy the target *would* have if it varied along the manifold as
    much, relatively, as the input does,

    .. math:: E^{\\mathrm{ref}}_k = E_0 \\, \\frac{E^x_k}{E^x_0},

    (for order 0, constant targets: 1, the squared error in target units), and warns naming
    the term. The term then still drives the network's derivatives towards the (vanishing)
    targets, on the scale the inputs set, instead of dividing by zero. A term's ``scale``
    setting overrides all of this by hand.
    """

    coordinate: tuple[float, ...] = attrs.field(converter=tuple, validator=lambda i, a, v: _check_floats(a, v, True))
    energy: tuple[float, ...] = attrs.field(converter=tuple, validator=lambda i, a, v: _check_floats(a, v))
    input_energy: tuple[float, ...] = attrs.field(
        default=(), converter=tuple, validator=lambda i, a, v: _check_floats(a, v)
    )

    #: Energies below this fraction of the reference count as negligible.
    NEGLIGIBLE = 1e-8

    @classmethod
    def from_data(cls, inputs: Jet, targets: Jet, *, chunk_size: int = 256) -> LossScales:
        """Compute the statistics from training jets (any order), ``chunk_size`` samples at a
        time in float64 (memory stays bounded for large data sets)."""
        if not isinstance(inputs, Jet) or not isinstance(targets, Jet):
            raise TypeError("inputs, targets: expected Jets")
        check_int("chunk_size", chunk_size, minimum=1)
        order = min(inputs.order, targets.order)
        if len(targets) != len(inputs) or (order >= 1 and targets.param_dim != inputs.param_dim):
            raise ValueError(f"targets: expected the jets of the same {len(inputs)} samples and {inputs.param_dim} "
                             f"coordinates as inputs, got {len(targets)} samples and {targets.param_dim} coordinates")
        n, d, order = len(inputs), inputs.param_dim, min(inputs.order, targets.order)
        for arg, jet in (("inputs", inputs), ("targets", targets)):
            found = non_finite_sample(jet.truncate(order))
            if found is not None:
                raise ValueError(f"{arg}: the {found[0]} of sample {found[1]} holds NaN or infinite values; the "
                                 "training data must be finite")
        chunks = [slice(k, k + chunk_size) for k in range(0, n, chunk_size)]
        # Pass 1: rms of the input derivatives per coordinate.
        sq = torch.zeros(d or 0, dtype=torch.float64)
        for sl in chunks:
            if order >= 1:
                sq += inputs.d1[sl].double().cpu().transpose(0, 1).reshape(d, -1).pow(2).sum(1)
        # (order 0, even of inputs with derivatives: no coordinate scales, as for value-only data)
        s = 1.0 / (sq / (n * inputs.value[0].numel())).sqrt().clamp_min(1e-300) if order >= 1 else sq[:0]
        # Pass 2: mean squares of the centred value and the scaled derivatives.
        energy = _energies(targets, s, order, chunks)
        input_energy = _energies(inputs, s, order, chunks)
        return cls(tuple(s.tolist()), energy, input_energy)

    def target_energy(self, order: int, term: str = "term") -> float:
        """``energy[order]``, or the reference energy where it is negligible (with a warning
        naming ``term``; see "Degenerate targets" above)."""
        check_int("order", order, minimum=0, maximum=self.order)
        energy = self.energy[order]
        if order == 0:
            reference = 1.0
        else:
            known = len(self.input_energy) > order and self.input_energy[0] > 0
            reference = self.target_energy(0, term) * (self.input_energy[order] / self.input_energy[0] if known else 1.0)
            if not reference > 0:  # the input does not vary either: nothing to compare with
                reference = 1.0
        if energy >= self.NEGLIGIBLE * reference:
            return energy
        what = "are (near) constant" if order == 0 else (
            f"have (near) vanishing derivatives of order {order} (e.g. targets linear in the coordinates)")
        warnings.warn(
            f"{term}: the training targets {what}: their energy {energy:.3g} is negligible, so the term is "
            f"normalised by the reference {reference:.3g} instead (set the term's scale to choose)",
            stacklevel=3,
        )
        return reference

    @property
    def order(self) -> int:
        """The highest order the statistics cover."""
        return len(self.energy) - 1

    def scale_jet(self, jet: Jet) -> Jet:
        """Express a jet's derivatives in the scaled coordinates (:math:`x_i \\to s_i x_i`,
        :math:`x_{ij} \\to s_i s_j x_{ij}`)."""
        if jet.order == 0:
            return jet
        if jet.param_dim != len(self.coordinate):
            raise ValueError(f"jet: expected {len(self.coordinate)} local coordinates like the scales, got {jet.param_dim}")
        return _scaled(jet, torch.tensor(self.coordinate, dtype=jet.dtype, device=jet.device))


def _scaled(jet: Jet, s: torch.Tensor) -> Jet:
    """``jet`` in the coordinates scaled by ``s`` ``[d]`` (same dtype and device)."""
    if jet.order == 0:
        return jet
    tail = [1] * (jet.value.dim() - 1)
    parts = [jet.value, jet.d1 * s.reshape(1, -1, *tail)]
    if jet.order == 2:
        i, j = triu_pairs(len(s), device=jet.device)
        parts.append(jet.d2 * (s[i] * s[j]).reshape(1, -1, *tail))
    return Jet(*parts)


def _energies(jet: Jet, s: torch.Tensor, order: int, chunks: list[slice]) -> tuple[float, ...]:
    """Mean square of the centred value, of the scaled first derivatives and of the entries of
    the full scaled second-derivative matrix, over samples (and coordinates) and features."""
    n, d = len(jet), len(s)
    mean = sum(jet.value[sl].double().cpu().sum(0) for sl in chunks) / n
    sums = [0.0] * (order + 1)
    for sl in chunks:
        part = _scaled(jet[sl].truncate(order).to(device="cpu", dtype=torch.float64), s)
        sums[0] += float((part.value - mean).pow(2).sum())
        if order >= 1:
            sums[1] += float(part.d1.pow(2).sum())
        if order >= 2:
            sums[2] += float((part.d2.pow(2) * pair_weights(d).reshape(1, -1, *([1] * (part.d2.dim() - 2)))).sum())
    m = jet.value.numel()  # samples x features
    return tuple([sums[0] / m] + [sums[k] / (m * d**k) for k in range(1, order + 1)])


def _check_terms(instance, attribute, value):
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{attribute.name}: expected a non-empty tuple of terms, got {value!r}")
    for t in value:
        if not isinstance(t, Term):
            raise TypeError(f"{attribute.name}: expected Term instances (manifoldtrain.objectives.Term), got {type(t).__name__}")
        if not attrs.has(type(t)):
            raise TypeError(f"{attribute.name}: {type(t).__name__} must be an attrs class (its fields are its settings)")
        check_float(f"{t.name}.weight", t.weight, nonnegative=True)
        check_float(f"{t.name}.start", t.start, nonnegative=True, maximum=1.0)
        check_int(f"{t.name}.data_order", t.data_order, minimum=0, maximum=2)
    names = [t.name for t in value]
    if len(set(names)) != len(names):
        raise ValueError(f"{attribute.name}: each term may appear once, got {names}")
    if all(t.start > 0 for t in value):
        raise ValueError(f"{attribute.name}: at least one term must start at 0")
    if not any(t.weight > 0 for t in value):
        weights = ", ".join(f"{t.name}.weight = {t.weight}" for t in value)
        raise ValueError(
            f"{attribute.name}: every term's weight is 0 ({weights}), so the objective trains nothing; "
            "give at least one term a weight > 0"
        )


@attrs.frozen
class Objective:
    """A weighted sum of terms, evaluated from one pass of the network.

    Build one from terms, or use :meth:`value`, :meth:`first_order`, :meth:`second_order`.

    Examples
    --------
    >>> from manifoldtrain.objectives import DerivativeTerm, ValueTerm
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
        from manifoldtrain.objectives.fitting import ValueTerm

        return cls((ValueTerm(),))

    @classmethod
    def first_order(cls, weights: tuple[float, float] = (1.0, 1.0), directions: int | None = None) -> Objective:
        """Values and first derivatives (relative terms, weights ``(value, d1)``)."""
        from manifoldtrain.objectives.fitting import DerivativeTerm, ValueTerm

        weights = _check_weights(weights, 2)
        return cls((ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions)))

    @classmethod
    def second_order(
        cls, weights: tuple[float, float, float] = (1.0, 1.0, 0.03), directions: int | None = None
    ) -> Objective:
        """Values, first and second derivatives (relative terms, weights ``(value, d1, d2)``).

        ``directions=k``: both derivative terms along ``k`` random directions (pairs of
        directions for the second order), sharing their jet rows: ``1 + 3k`` rows instead of
        ``1 + d + d(d+1)/2``.

        The default 0.03 on the second-order term was the best of 1, 0.3, 0.1, 0.03 and 0.01
        for the cube (1000 samples, tanh MLP 3x256, 150 s; test RMSE 5.8e-2, 2.1e-2, 1.1e-2,
        8.9e-3, 9.2e-3): the second-order term's gradients are much larger than the others' at
        equal relative loss and, at weight 1, swamp Adam's step sizes for them.
        """
        from manifoldtrain.objectives.fitting import DerivativeTerm, ValueTerm

        weights = _check_weights(weights, 3)
        return cls(
            (ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions),
             DerivativeTerm(2, weights[2], directions=directions))
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def max_order(self) -> int:
        """The jet order of training data the objective reads (the highest of its terms')."""
        return max(t.data_order for t in self.terms)

    def normalisers(self, scales: LossScales) -> dict[str, float]:
        """Each term's normaliser, by name."""
        out = {}
        for t in self.terms:
            norm = float(t.normaliser(scales))
            if not norm > 0 or norm == float("inf"):
                raise ValueError(f"{t.name}: its normaliser must be positive and finite, got {norm}")
            out[t.name] = norm
        return out

    def losses(
        self,
        model: torch.nn.Module,
        inputs: Jet,
        targets: Jet,
        scales: LossScales,
        generator: torch.Generator | None = None,
        *,
        rows_fn=taylor_rows,
        progress: float = 1.0,
        scaled: bool = False,
        normalisers: dict[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each term's weighted, normalised loss on a batch, by name (their sum is the objective).

        Parameters
        ----------
        model : nn.Module
        inputs, targets : Jet
            The batch, of at least :attr:`max_order` (in the model's dtype and device).
        scales : LossScales
            Of the training data.
        generator : torch.Generator, optional
            Draws the random directions.
        rows_fn : callable
            :func:`~manifoldtrain.network_jets.taylor_rows` (default) or
            :func:`~manifoldtrain.network_jets.nested_jvp_rows` (the reference path).
        progress : float
            Fraction of the training budget spent (0..1): terms whose ``start`` lies ahead
            report 0 and cost nothing.
        scaled : bool
            The jets are already in scaled coordinates (the :class:`~manifoldtrain.training.Trainer`
            scales its data once).
        normalisers : dict, optional
            :meth:`normalisers` computed beforehand (default: from ``scales``).
        """
        active = [t for t in self.terms if t.start <= progress]
        if not active:
            raise ValueError(f"progress: no term is active at {progress} (every term starts later)")
        order = self.max_order
        check_int("inputs.order", inputs.order, minimum=order)
        check_int("targets.order", targets.order, minimum=order)
        x, y = inputs.truncate(order), targets.truncate(order)
        if not scaled:
            x, y = scales.scale_jet(x), scales.scale_jet(y)
        norms = self.normalisers(scales) if normalisers is None else normalisers
        batch = Batch(model, x, y, scales, generator)
        requests = {t.name: t.request(batch) for t in active}
        answered = _run_rows(batch, requests, rows_fn)
        out = {}
        for t in self.terms:
            if t.name in requests:
                out[t.name] = t.weight * t.loss(batch, answered[t.name]) / norms[t.name]
            else:
                out[t.name] = torch.zeros((), dtype=x.dtype, device=x.device)
        return out


def _check_weights(weights, k: int) -> tuple[float, ...]:
    """``weights`` of :meth:`Objective.first_order` (``k = 2``) or :meth:`Objective.second_order`
    (``k = 3``): ``k`` finite numbers ``>= 0``, not all 0; returned as floats."""
    what = ("value", "d1", "d2")[:k]
    if not isinstance(weights, (tuple, list)):
        raise TypeError(f"weights: expected a tuple of {k} numbers ({', '.join(what)}), got {type(weights).__name__}")
    if len(weights) != k:
        raise ValueError(f"weights: expected {k} numbers ({', '.join(what)}), got {len(weights)}: {tuple(weights)!r}")
    out = tuple(check_float(f"weights[{i}] ({name})", w, nonnegative=True) for i, (name, w) in enumerate(zip(what, weights)))
    if not any(out):
        raise ValueError(
            f"weights: expected at least one weight > 0, got {out}: an objective of zero weights trains nothing"
        )
    return out


def _run_rows(batch: Batch, requests: dict[str, Rows | None], rows_fn) -> dict[str, Rows | None]:
    """One pass of the network for every request; sets ``batch.value``, returns the answers."""
    x = batch.inputs
    wanted = {name: r for name, r in requests.items() if r is not None}
    if not wanted:
        batch.value = batch.model(x.value)
        return dict(requests)
    blocks: list[torch.Tensor] = []
    offsets: dict[int, int] = {}
    seconds: list[torch.Tensor] = []
    second_offsets: dict[tuple, int] = {}
    pairs: list[tuple[int, int]] = []
    plan = {}
    n_first = n_second = 0
    for name, r in wanted.items():
        index: list[int] = []  # this request's first-order rows among all of them
        for block in r.tangents:
            check_tensor(f"{name}: tangents", block, shape=(len(x), None, *x.shape), finite=False)
            if id(block) not in offsets:
                offsets[id(block)] = n_first
                blocks.append(block)
                n_first += block.shape[1]
            index.extend(range(offsets[id(block)], offsets[id(block)] + block.shape[1]))
        second = None
        if r.second is not None:
            p = torch.as_tensor(r.pairs)
            if p.dtype != torch.long or p.shape != (r.second.shape[1], 2) or not all(0 <= a < len(index) for a in p.flatten().tolist()):
                raise ValueError(f"{name}: pairs must be a long tensor [{r.second.shape[1]}, 2] of indices into its tangents")
            p = p.tolist()
            key = (id(r.second), tuple((index[a], index[b]) for a, b in p))
            if key not in second_offsets:  # the same second-order rows of the same first-order rows: pass once
                second_offsets[key] = n_second
                seconds.append(r.second)
                pairs.extend(key[1])
                n_second += r.second.shape[1]
            second = slice(second_offsets[key], second_offsets[key] + r.second.shape[1])
        plan[name] = (index, second)
    first_in = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    second_in = (seconds[0] if len(seconds) == 1 else torch.cat(seconds, dim=1)) if seconds else None
    pair_tensor = torch.tensor(pairs, dtype=torch.long, device=x.device) if pairs else None
    value, first, second = rows_fn(batch.model, x.value, first_in, second_in, pair_tensor)
    batch.value = value
    answered = dict(requests)
    for name, (index, sl) in plan.items():
        out_first = first if index == list(range(first.shape[1])) else first[:, torch.tensor(index, device=x.device)]
        answered[name] = attrs.evolve(wanted[name], out_first=out_first, out_second=second[:, sl] if sl is not None else None)
    return answered
