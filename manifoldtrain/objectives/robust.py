"""Robustness terms: invariance (the conventional baseline) and oracle training.

Each term perturbs the input by :math:`\\delta` and says what the network's answer should do:

* :class:`NoiseInvarianceTerm`: noise augmentation with the clean target,
  :math:`\\lVert N(x + \\delta) - y \\rVert^2`, i.e. the answer must not change;
* :class:`AdversarialInvarianceTerm`: its worst case, adversarial training with the clean
  target (Madry et al., 2018): :math:`\\max_{\\lVert \\delta \\rVert_2 \\le \\epsilon}
  \\lVert N(x + \\delta) - y \\rVert^2` by projected gradient ascent;
* :class:`JacobianInvarianceTerm`: its first-order form, the Jacobian penalty
  :math:`\\lVert N'(x)\\, \\delta \\rVert^2` along random directions (Hoffman et al., 2019, who
  project on random *output* directions with a ``vjp``; here the directions are in the input
  and ride on the objective's one forward-mode pass, an estimate of the same
  :math:`\\lVert N'(x) \\rVert_F^2`);
* :class:`OracleTerm`: the network's change matched to the oracle's,
  :math:`\\lVert N'(x)\\, \\delta - Y J^+ \\delta \\rVert^2 = \\lVert E \\delta \\rVert^2`
  (order 1), or with the second-order terms of both for larger :math:`\\delta` (order 2);
* :class:`HessianOracleTerm`: the same along the top right singular vectors of the error
  operator :math:`E` (the top eigenvectors of :math:`E^T E`, the Hessian of
  :math:`\\tfrac12 \\lVert N(x + \\delta) - O(x + \\delta) \\rVert^2` at :math:`\\delta = 0`),
  found by a few subspace iterations per batch: the worst case, targeted directly.

Random perturbations are Gaussian, :math:`\\delta = \\sigma g` with :math:`g` standard normal
per input entry (:math:`E[\\delta \\delta^T] = \\sigma^2 I`), so the random terms are unbiased:
over draws, :class:`JacobianInvarianceTerm` has mean :math:`\\sigma^2 \\lVert N'(x) \\rVert_F^2 / m`
and :class:`OracleTerm` (order 1) :math:`\\sigma^2 \\lVert E \\rVert_F^2 / m` (per sample,
:math:`m` outputs; ``tests/test_robustness.py`` checks both statistically). For the network
linearised at :math:`x`, the noise term is the Jacobian term plus the clean loss, exactly:
:math:`E\\lVert N(x) + N'(x)\\,\\delta - y \\rVert^2 = \\lVert e \\rVert^2 + \\sigma^2
\\lVert N'(x) \\rVert_F^2` with :math:`e = N(x) - y`. The network itself adds a curvature term
of the same order: :math:`E\\lVert N(x + \\delta) - y \\rVert^2 = \\lVert e \\rVert^2 +
\\sigma^2 \\bigl(\\lVert N'(x) \\rVert_F^2 + \\textstyle\\sum_i e_i\\, \\Delta N_i(x)\\bigr) +
O(\\sigma^4)` (:math:`\\Delta N_i` the Laplacian of output :math:`i`), so the two agree to
:math:`O(\\sigma^2)` only where the network fits (:math:`e \\approx 0`).

**Units of** ``strength``. For the random terms (noise, Jacobian, :class:`OracleTerm`)
``strength`` is :math:`\\sigma`, a noise level per input entry (the noise level of the
evaluation protocol): :math:`\\delta` has L2 norm about :math:`\\sigma \\sqrt{N}` (41
:math:`\\sigma` on the 41x41 cube). For :class:`HessianOracleTerm` it is the **L2 norm** of
:math:`\\delta = \\sigma v` itself, not a per-entry level, and for
:class:`AdversarialInvarianceTerm` the L2 radius of the ball, like the budgets of
:func:`~manifoldtrain.robustness.adversarial_error`: the worst-case terms and the attack share
their units. At equal ``strength`` the two
oracle terms' means are :math:`\\sigma^2 \\lVert E \\rVert_F^2 / m` and
:math:`\\sigma^2 \\lVert E \\rVert_2^2 / m` (one direction), which differ by
:math:`\\lVert E \\rVert_F^2 / \\lVert E \\rVert_2^2`: 1.25-2.0 (median 1.5) on a random
network, 1.0-1.4 on trained ones (:math:`E` has rank at most ``m`` and is dominated by its top
direction).

**Why random directions lose anyway** (they did, in ``docs/robustness.rst``): not their mean.
In expectation the random term *is* the Frobenius penalty, which already weighs the worst
direction with its full :math:`s_1^2`. The difference is the variance: per sample and
direction, :math:`\\operatorname{Var} \\lVert E g \\rVert^2 = 2 \\sum_i s_i^4`, a relative
standard deviation of about 1 (0.95 measured) when one singular value dominates; on a batch of
32 cube samples the term's relative standard deviation is 0.18 with one direction, 0.093 with
4, 0.048 with 16 (Gaussian theory: 0.18, 0.091, 0.046), against 0.023 for the Hessian-aligned
term with one direction (its only randomness the subspace iteration's start; 0.0019 with 4).
``python benchmarks/oracle_term_variance.py --out benchmarks/results/oracle_term_variance.json``
(a random 1681-128-128-9 tanh network, float64). That the noise, rather than anything in
expectation, is what costs the random term accuracy and robustness is our reading: the loss's
variance is measured, its effect on training is not.

Every term is divided by the variance of the training targets, like
:class:`~manifoldtrain.objectives.ValueTerm`, so that weight 1 weighs it like the value loss.
Costs per sample and step, in passes of the network (``benchmarks/train_speed.py`` measures them):
noise ``k`` forward and backward passes; adversarial ``steps`` forward and input-gradient passes
(on detached parameters) plus one forward and backward; Jacobian and oracle ``k`` jet rows in
the shared pass (order 2: ``2k``); Hessian-aligned ``k`` rows plus ``iterations x k`` ``vjp``
and ``jvp``.
"""

from __future__ import annotations

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int
from manifoldtrain.objectives.core import Batch, LossScales, Rows, Term
from manifoldtrain.objectives.fitting import MAX_WEIGHT
from manifoldtrain.robustness.operator import ErrorOperator, detached, l2_ball_step, spectral_norm
from manifoldtrain.robustness.oracle import LinearisedOracle

__all__ = ["NoiseInvarianceTerm", "AdversarialInvarianceTerm", "JacobianInvarianceTerm", "OracleTerm", "HessianOracleTerm",
           "gaussian_perturbations", "pgd_perturbations"]


def gaussian_perturbations(batch: Batch, k: int, strength: float) -> torch.Tensor:
    """``[n, k, *input_shape]`` Gaussian perturbations :math:`\\sigma g` for the batch (drawn on
    the CPU with ``batch.generator``, then moved to the batch's dtype and device)."""
    x = batch.inputs.value
    g = torch.randn(x.shape[0], k, *x.shape[1:], generator=batch.generator, dtype=torch.float64)
    return (strength * g).to(dtype=x.dtype, device=x.device)


def _check_scale(instance, attribute, value):
    if value is not None:
        check_float(attribute.name, value, positive=True)


def _strength():
    return attrs.field(validator=attrs_validator(check_float, positive=True))


def _weight():
    return attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True, maximum=MAX_WEIGHT))


def _count():
    return attrs.field(default=1, validator=attrs_validator(check_int, minimum=1))


def _start():
    return attrs.field(default=0.0, validator=attrs_validator(check_float, nonnegative=True, maximum=1.0))


class _RobustTerm(Term):
    """Shared: normalised by the target variance (or ``scale``), like the value term."""

    def normaliser(self, scales: LossScales) -> float:
        return self.scale if self.scale is not None else scales.target_energy(0, self.name)


@attrs.frozen
class NoiseInvarianceTerm(_RobustTerm):
    """Noise augmentation with the clean target: :math:`\\lVert N(x + \\sigma g) - y \\rVert^2`.

    The conventional baseline: it asks the answer not to change under noise, which is wrong
    along the manifold (where the right answer moves) and right across it.

    Attributes
    ----------
    strength : float
        :math:`\\sigma` (> 0), the noise level per input entry, in input units.
    weight : float
    samples : int
        Noisy copies per sample and step (each a forward and backward pass).
    start : float
    scale : float or None
        Divides the mean squared error (default: the training targets' variance).
    """

    strength: float = _strength()
    weight: float = _weight()
    samples: int = _count()
    start: float = _start()
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    @property
    def name(self) -> str:
        return "invariance-noise"

    def loss(self, batch: Batch, rows: Rows | None) -> torch.Tensor:
        x = batch.inputs.value
        noisy = x.unsqueeze(1) + gaussian_perturbations(batch, self.samples, self.strength)
        out = batch.model(noisy.reshape(-1, *x.shape[1:])).reshape(len(x), self.samples, *batch.targets.shape)
        return (out - batch.targets.value.unsqueeze(1)).pow(2).mean()


def pgd_perturbations(fn, x: torch.Tensor, y: torch.Tensor, radius: float, steps: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Perturbations :math:`\\delta` ``[n, *input_shape]`` with :math:`\\lVert \\delta \\rVert_2 \\le`
    ``radius`` per sample that make :math:`\\lVert f(x + \\delta) - y \\rVert^2` large: projected
    gradient ascent (Madry et al., 2018) from a random start uniform in radius along a Gaussian
    direction (drawn on the CPU with ``generator``), ``steps`` normalised gradient steps of length
    :math:`2.5\\, \\epsilon / \\text{steps}`, each projected back on the ball. The ascent
    is on ``fn``'s input only: pass a function with detached parameters
    (:func:`~manifoldtrain.robustness.operator.detached`). Returned detached.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> x, y = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    >>> d = pgd_perturbations(lambda t: t @ A.T, x, y, 0.5, 10, torch.Generator().manual_seed(0))
    >>> round(float(d.norm()), 6), round(float(d[0, 0].abs()), 3)  # on the sphere, along A's top direction
    (0.5, 0.5)
    """
    check_float("radius", radius, positive=True)
    check_int("steps", steps, minimum=0)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 1 or y.dim() < 1 \
            or len(x) != len(y):
        raise ValueError(f"x, y: expected tensors [n, *input_shape] and [n, *output_shape] with the same n, got "
                         f"{getattr(x, 'shape', type(x).__name__)} and {getattr(y, 'shape', type(y).__name__)}")
    n = x.shape[0]
    ball = lambda t: t.reshape(n, *([1] * (x.dim() - 1)))  # noqa: E731
    norm = lambda t: t.reshape(n, -1).norm(dim=1)  # noqa: E731
    g = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    r = torch.rand(n, generator=generator, dtype=torch.float64)
    g, r = g.to(dtype=x.dtype, device=x.device), r.to(dtype=x.dtype, device=x.device)
    delta = g * ball(radius * r / norm(g).clamp_min(1e-30))
    step = 2.5 * radius / max(steps, 1)
    x = x.detach()
    for _ in range(steps):
        with torch.enable_grad():
            delta = delta.detach().requires_grad_(True)
            loss = (fn(x + delta) - y.detach()).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
        delta = l2_ball_step(delta.detach(), grad, step, radius)
    return delta.detach()


@attrs.frozen
class AdversarialInvarianceTerm(_RobustTerm):
    """Adversarial training with the clean target: :math:`\\lVert N(x + \\delta^*) - y \\rVert^2`,
    :math:`\\delta^*` the worst perturbation in the L2 ball of radius :math:`\\epsilon` that
    ``steps`` of projected gradient ascent find (:func:`pgd_perturbations`, on the network with
    its parameters detached; the loss then trains the network at :math:`x + \\delta^*`).

    The conventional baseline at its strongest: the noise term's invariance asked in the worst
    case instead of on average. Like every invariance term it asks the answer not to change,
    which is wrong along the manifold; against :class:`HessianOracleTerm` (the worst case of
    the error against the oracle) it is the comparison at equal effort on the worst direction.

    Attributes
    ----------
    strength : float
        :math:`\\epsilon` (> 0): the **L2 radius** of the ball, in input units (not a level per
        input entry; the budgets of :func:`~manifoldtrain.robustness.adversarial_error` are the same units).
    weight : float
    steps : int
        Gradient-ascent steps per training step (default 3; each a forward and an input-gradient
        pass). 0 trains on the random start alone: noise of norm up to :math:`\\epsilon`.
    start : float
    scale : float or None
        Divides the mean squared error (default: the training targets' variance).
    """

    strength: float = _strength()
    weight: float = _weight()
    steps: int = attrs.field(default=3, validator=attrs_validator(check_int, minimum=0))
    start: float = _start()
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    @property
    def name(self) -> str:
        return "invariance-adversarial"

    def loss(self, batch: Batch, rows: Rows | None) -> torch.Tensor:
        x, y = batch.inputs.value, batch.targets.value
        delta = pgd_perturbations(detached(batch.model), x, y, self.strength, self.steps, batch.generator)
        return (batch.model(x + delta) - y).pow(2).mean()


@attrs.frozen
class JacobianInvarianceTerm(_RobustTerm):
    """The Jacobian penalty :math:`\\lVert N'(x)\\, \\sigma g \\rVert^2` along ``k`` random
    Gaussian directions: an unbiased estimate of :math:`\\sigma^2 \\lVert N'(x) \\rVert_F^2 / m`.

    Attributes
    ----------
    strength : float
        :math:`\\sigma` (> 0), per input entry.
    weight : float
    directions : int
        ``k``, jet rows per sample and step.
    start : float
    scale : float or None
    """

    strength: float = _strength()
    weight: float = _weight()
    directions: int = _count()
    start: float = _start()
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    @property
    def name(self) -> str:
        return "invariance-jacobian"

    def request(self, batch: Batch) -> Rows:
        return Rows(gaussian_perturbations(batch, self.directions, self.strength))

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return rows.out_first.pow(2).mean()


@attrs.frozen
class OracleTerm(_RobustTerm):
    """The network's response to random perturbations matched to the oracle's.

    Order 1: :math:`\\lVert N'(x)\\, \\delta - Y J^+ \\delta \\rVert^2 = \\lVert E \\delta \\rVert^2`,
    an unbiased estimate of :math:`\\sigma^2 \\lVert E \\rVert_F^2 / m` (``k`` jet rows). Order 2:
    :math:`\\lVert N'(x)\\, \\delta + \\tfrac12 N''(x)[\\delta, \\delta] - (O_2(x + \\delta) - y) \\rVert^2`
    with the second-order Taylor oracle (:class:`~manifoldtrain.robustness.LinearisedOracle`),
    for perturbations too large for the first order (``2k`` rows; needs jets of order 2).

    The second-order oracle's range (against the exact oracle on the default cube, median over
    32 samples): along tangent directions of relative size :math:`\\lVert \\delta \\rVert /
    \\lVert x \\rVert` 0.05, 0.1, 0.2, 0.3, 0.5 it is 4.4x, 2.6x, 1.9x, 1.25x, 1.05x more
    accurate than the first order (better on 97%, 88%, 78%, 69%, 53% of samples; worse on the
    rest, which is where a sample at 0.2 can come out worse): it helps up to a relative size of
    about 0.2 (L2 1.3 on the cube), and neither order sees past a focal point of the manifold
    (L2 0.58-0.88 along the most curved normal). A Gaussian :math:`\\delta` of level
    :math:`\\sigma` has relative size about :math:`41 \\sigma / \\lVert x \\rVert`, 0.2 at
    :math:`\\sigma \\approx 0.03`, mostly normal to the manifold, where the second order adds
    only the curvature term :math:`b`. ``python benchmarks/oracle_focal.py --out
    benchmarks/results/oracle_focal.json``.

    Attributes
    ----------
    strength : float
        :math:`\\sigma` (> 0), per input entry.
    weight : float
    directions : int
        ``k`` random perturbations per sample and step.
    order : int
        1 or 2.
    start : float
    scale : float or None
    """

    strength: float = _strength()
    weight: float = _weight()
    directions: int = _count()
    order: int = attrs.field(default=1, validator=attrs_validator(check_int, minimum=1, maximum=2))
    start: float = _start()
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    @property
    def name(self) -> str:
        return "oracle" if self.order == 1 else "oracle (order 2)"

    @property
    def data_order(self) -> int:
        return self.order

    def request(self, batch: Batch) -> Rows:
        delta = gaussian_perturbations(batch, self.directions, self.strength)
        oracle = LinearisedOracle(batch.inputs, batch.targets)
        if self.order == 1:
            return Rows(delta, state=oracle.first(delta))
        k = self.directions
        pairs = torch.arange(k).unsqueeze(1).expand(k, 2).contiguous()
        return Rows(delta, torch.zeros_like(delta), pairs, state=oracle.second(delta))

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        change = rows.out_first if self.order == 1 else rows.out_first + 0.5 * rows.out_second
        return (change - rows.state).pow(2).mean()


@attrs.frozen
class HessianOracleTerm(_RobustTerm):
    """:math:`\\lVert E \\delta \\rVert^2` along the top ``k`` right singular vectors of the
    error operator (:math:`\\delta = \\sigma v`, :math:`|v| = 1`), found by ``iterations``
    subspace iterations from a random start (:func:`~manifoldtrain.robustness.spectral_norm`, on
    the network with its parameters detached). At convergence the loss is
    :math:`\\sigma^2 \\sum_{j \\le k} s_j^2 / (k m)`: the worst-case amplification, squared.

    Attributes
    ----------
    strength : float
        :math:`\\sigma` (> 0): the **L2 norm** of each perturbation, not a noise level per
        input entry (a Gaussian perturbation of level :math:`\\sigma` per entry has norm
        about :math:`\\sigma \\sqrt{N}`, 41 :math:`\\sigma` on the 41x41 cube).
    weight : float
    directions : int
        ``k``, the number of top directions.
    iterations : int
        Subspace iterations per step (each ``k`` ``vjp`` and ``k`` ``jvp``).
    start : float
    scale : float or None
    """

    strength: float = _strength()
    weight: float = _weight()
    directions: int = _count()
    iterations: int = attrs.field(default=2, validator=attrs_validator(check_int, minimum=1))
    start: float = _start()
    scale: float | None = attrs.field(default=None, validator=_check_scale)

    data_order = 1

    @property
    def name(self) -> str:
        return "oracle (hessian)"

    def request(self, batch: Batch) -> Rows:
        operator = ErrorOperator(batch.model, batch.inputs, batch.targets)
        top = spectral_norm(operator, block=self.directions, iterations=self.iterations, tol=0.0, generator=batch.generator)
        delta = self.strength * top.vectors
        return Rows(delta, state=operator.oracle.first(delta))

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return (rows.out_first - rows.state).pow(2).mean()
