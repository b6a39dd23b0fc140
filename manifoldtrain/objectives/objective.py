"""The :class:`Objective`: terms composed into one weighted sum, evaluated from one pass of the network.

It sits above the term protocol (:mod:`manifoldtrain.objectives.core`) and the fitting terms
(:mod:`manifoldtrain.objectives.fitting`), whose :class:`ValueTerm` and :class:`DerivativeTerm`
its constructors :meth:`Objective.value`, :meth:`Objective.first_order` and
:meth:`Objective.second_order` use.
"""

from __future__ import annotations

import attrs
import torch

from manifoldtrain._validation import check_float, check_int
from manifoldtrain.data.statistics import LossScales
from manifoldtrain.jet import Jet
from manifoldtrain.network_jets import taylor_rows
from manifoldtrain.objectives.core import Batch, Term, run_rows
from manifoldtrain.objectives.fitting import DerivativeTerm, ValueTerm

__all__ = ["Objective"]

#: Where :class:`Objective` was defined before it moved here: the name that checkpoints written
#: then record for it (:func:`manifoldtrain._plain.plain`), which a resumed run accepts as this class.
FORMER_NAME = "manifoldtrain.objectives.core:Objective"


def _as_terms(value):
    """A sequence of terms as a tuple; anything else (one term, not in a list) is left for
    :func:`_check_terms` to name."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return value


def _check_terms(instance, attribute, value):
    if isinstance(value, Term):
        raise TypeError(f"{attribute.name}: expected a tuple or list of terms, got one {type(value).__name__}; write "
                        f"Objective(({type(value).__name__}(...),)) or Objective([{type(value).__name__}(...)])")
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

    terms: tuple = attrs.field(converter=_as_terms, validator=_check_terms)

    @classmethod
    def value(cls) -> Objective:
        """Fit values only (conventional training)."""
        return cls((ValueTerm(),))

    @classmethod
    def first_order(cls, weights: tuple[float, float] = (1.0, 1.0), directions: int | None = None) -> Objective:
        """Values and first derivatives (relative terms, weights ``(value, d1)``)."""
        weights = _check_weights(weights, 2)
        return cls((ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions)))

    @classmethod
    def second_order(
        cls, weights: tuple[float, float, float] = (1.0, 1.0, 0.03), directions: int | None = None, grid: bool = False
    ) -> Objective:
        """Values, first and second derivatives (relative terms, weights ``(value, d1, d2)``).

        ``directions=k``: both derivative terms along ``k`` random directions (pairs of
        directions for the second order), sharing their jet rows: ``1 + 3k`` rows instead of
        ``1 + d + d(d+1)/2``. With ``grid`` too, the second order along all ``k**2`` pairs of
        ``k`` and ``k`` directions (:attr:`DerivativeTerm.grid`): ``1 + 2k + k**2`` rows.

        The default 0.03 on the second-order term was the best of 1, 0.3, 0.1, 0.03 and 0.01
        for the cube (1000 samples, tanh MLP 3x256, 150 s; test RMSE 5.8e-2, 2.1e-2, 1.1e-2,
        8.9e-3, 9.2e-3): the second-order term's gradients are much larger than the others' at
        equal relative loss and, at weight 1, swamp Adam's step sizes for them.
        """
        weights = _check_weights(weights, 3)
        return cls(
            (ValueTerm(weights[0]), DerivativeTerm(1, weights[1], directions=directions),
             DerivativeTerm(2, weights[2], directions=directions, grid=grid))
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
        answered = run_rows(batch, requests, rows_fn)
        out = {}
        for t in self.terms:
            if t.name in requests:
                loss = t.loss(batch, answered[t.name])
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise ValueError(f"objective: term {t.name!r} ({type(t).__name__}.loss) returned {got}; expected "
                                     "a scalar tensor (reduce it, e.g. with .mean())")
                out[t.name] = t.weight * loss / norms[t.name]
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
