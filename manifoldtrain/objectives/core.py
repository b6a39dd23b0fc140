"""The term protocol and the per-batch context (the :class:`~manifoldtrain.objectives.Objective`
that composes terms is in :mod:`manifoldtrain.objectives.objective`; the loss scales,
statistics of the data, in :mod:`manifoldtrain.data.statistics`).

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
from typing import Any

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_cpu_generator, check_int, check_tensor
from manifoldtrain.data.statistics import LossScales
from manifoldtrain.jet import Jet

__all__ = ["Term", "Rows", "Batch", "random_directions", "run_rows"]


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


def run_rows(batch: Batch, requests: dict[str, Rows | None], rows_fn) -> dict[str, Rows | None]:
    """One pass of the network for every term's request (``{name: Rows or None}``), merged: blocks
    that are the same tensor are passed once. Sets ``batch.value`` and returns each request with
    the network's answers filled in (:attr:`Rows.out_first`, :attr:`Rows.out_second`)."""
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
