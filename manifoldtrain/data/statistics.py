"""Statistics of the training data that put every loss term on one scale: :class:`LossScales`,
computed from jets in memory (:meth:`LossScales.from_data`) or streamed from any reader
(:func:`streamed_scales`), and :func:`scale_coordinates`, the change of units they define.

They belong with the data (a :class:`~manifoldtrain.data.sources.DataSource` computes its own),
and the objective terms read them (:meth:`Term.normaliser <manifoldtrain.objectives.Term.normaliser>`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import attrs
import torch

from manifoldtrain._validation import check_float, check_int, non_finite_sample
from manifoldtrain.jet import Jet, pair_weights, triu_pairs

__all__ = ["LossScales", "scale_coordinates", "streamed_scales"]


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
        return scale_coordinates(jet, torch.tensor(self.coordinate, dtype=jet.dtype, device=jet.device))


def scale_coordinates(jet: Jet, s: torch.Tensor) -> Jet:
    """``jet`` in the local coordinates scaled by ``s`` ``[d]`` (:math:`x_i \\to s_i x_i`,
    :math:`x_{ij} \\to s_i s_j x_{ij}`; same dtype and device)."""
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
        part = scale_coordinates(jet[sl].truncate(order).to(device="cpu", dtype=torch.float64), s)
        sums[0] += float((part.value - mean).pow(2).sum())
        if order >= 1:
            sums[1] += float(part.d1.pow(2).sum())
        if order >= 2:
            sums[2] += float((part.d2.pow(2) * pair_weights(d).reshape(1, -1, *([1] * (part.d2.dim() - 2)))).sum())
    m = jet.value.numel()  # samples x features
    return tuple([sums[0] / m] + [sums[k] / (m * d**k) for k in range(1, order + 1)])


def streamed_scales(read: Callable[[slice, int], tuple[Jet, Jet]], n: int, order: int, *,
                    chunk_size: int = 256, name: str = "read") -> LossScales:
    """:meth:`LossScales.from_data <manifoldtrain.data.statistics.LossScales.from_data>` of ``n``
    samples read chunk by chunk, never all at once: the same numbers, to the last bit.

    Parameters
    ----------
    read : callable
        ``read(slice(a, b), order) -> (inputs, targets)``, the jets of samples ``a`` to
        ``b`` up to ``order`` (at least). Called twice per chunk.
    n : int
        Samples.
    order : int
        The order of the statistics.
    chunk_size : int
        Samples per chunk (:meth:`LossScales.from_data`'s default 256 gives its exact sums).
    name : str
        What ``read`` is, for the error that names a sample holding NaN or infinite values.
    """
    check_int("n", n, minimum=1)
    check_int("order", order, minimum=0, maximum=2)
    check_int("chunk_size", chunk_size, minimum=1)
    chunks = [slice(k, min(k + chunk_size, n)) for k in range(0, n, chunk_size)]
    # Pass 1: rms of the input derivatives per coordinate; the means of the values.
    sq = None
    sums: dict[str, object] = {"input": 0, "target": 0}
    features = {}
    for sl in chunks:
        x, y = read(sl, min(order, 1))
        if order >= 1:
            d = x.d1.shape[1]
            if sq is None:
                sq = torch.zeros(d, dtype=torch.float64)
            sq += x.d1.double().cpu().transpose(0, 1).reshape(d, -1).pow(2).sum(1)
        for key, jet in (("input", x), ("target", y)):
            sums[key] = sums[key] + jet.value.double().cpu().sum(0)
            features[key] = jet.value[0].numel()
    if order >= 1:
        s = 1.0 / (sq / (n * features["input"])).sqrt().clamp_min(1e-300)
        d = len(s)
    else:
        s = torch.zeros(0, dtype=torch.float64)
        d = 0
    means = {key: total / n for key, total in sums.items()}
    # Pass 2: mean squares of the centred values and the scaled derivatives.
    energy = {"input": [0.0] * (order + 1), "target": [0.0] * (order + 1)}
    weights = pair_weights(d) if order >= 2 else None
    for sl in chunks:
        x, y = read(sl, order)
        for key, jet in (("input", x), ("target", y)):
            found = non_finite_sample(jet.truncate(order))
            if found is not None:
                raise ValueError(f"{name}: the {key} {found[0]} of sample {sl.start + found[1]} holds NaN or infinite "
                                 "values; the training data must be finite")
            part = scale_coordinates(jet.truncate(order).to(device="cpu", dtype=torch.float64), s)
            acc = energy[key]
            acc[0] += float((part.value - means[key]).pow(2).sum())
            if order >= 1:
                acc[1] += float(part.d1.pow(2).sum())
            if order >= 2:
                acc[2] += float((part.d2.pow(2) * weights.reshape(1, -1, *([1] * (part.d2.dim() - 2)))).sum())

    def finish(key: str) -> tuple[float, ...]:
        m = n * features[key]
        acc = energy[key]
        return tuple([acc[0] / m] + [acc[k] / (m * d**k) for k in range(1, order + 1)])

    return LossScales(tuple(s.tolist()), finish("target"), finish("input"))
