"""The oracle: how the *right* answer changes when the input is perturbed.

For an input :math:`\\tilde x = x + \\delta` near the manifold, the oracle's answer is the
target at the nearest point of the manifold,

.. math:: O(\\tilde x) = y(p, \\theta^*), \\qquad
    \\theta^* = \\operatorname{argmin}_\\theta \\lVert x(p, \\theta) - \\tilde x \\rVert .

* :func:`exact_oracle` solves the projection by Gauss-Newton on the chart, re-centred at each
  step with :meth:`Manifold.move <manifoldtrain.Manifold.move>`, and never returns an answer that
  did not converge without saying so.
* :class:`LinearisedOracle` expands it in a Taylor series from the jets at ``p``: with
  :math:`J = [x_1 \\ldots x_d]` and :math:`Y = [y_1 \\ldots y_d]`, to first order
  :math:`\\theta^* \\approx \\theta_1 = J^+ \\delta` and :math:`O(x + \\delta) \\approx y + Y J^+ \\delta`;
  to second order (needing the second derivatives)

  .. math::
      \\theta^* &\\approx \\theta_1 + \\theta_2, \\qquad
      J^T J\\, \\theta_2 = -\\tfrac12 J^T x_{\\theta_1 \\theta_1} + b, \\quad
      b_i = \\Big(\\sum_j x_{ij}\\, \\theta_{1j}\\Big) \\cdot (I - P_T)\\, \\delta, \\\\
      O(x + \\delta) &\\approx y + Y (\\theta_1 + \\theta_2) + \\tfrac12\\, y_{\\theta_1 \\theta_1},

  where :math:`P_T = J J^+` projects on the tangent space; ``b`` is the curvature of the
  manifold meeting the part of the perturbation that leaves it. The first-order answer is off by
  :math:`O(|\\delta|^2)`, the second-order one by :math:`O(|\\delta|^3)`
  (``tests/test_robustness.py`` measures both rates against the exact oracle).

  **Where the second order helps** (default cube, 32 samples, error against the exact oracle
  in target units, median; ``python benchmarks/oracle_focal.py --out
  benchmarks/results/oracle_focal.json``): along tangent directions, at relative size
  :math:`\\lVert \\delta \\rVert / \\lVert x \\rVert` = 0.05, 0.1, 0.2, 0.3, 0.5 (L2 0.34 to
  3.4) the second order is 4.4x, 2.6x, 1.9x, 1.25x and 1.05x better than the first, and better
  on 97%, 88%, 78%, 69% and 53% of the samples: it helps clearly up to about 0.2 (L2 1.3),
  marginally to 0.3, not at 0.5, and on a minority of samples it is worse from 0.1 on. With an
  equal normal part added the picture is the same (6.3x at 0.05, 1.4x at 0.5); with the normal
  of largest curvature added it is worse than the first order at 0.5. Along a normal alone
  both say "no change", exactly right below the focal distance (:func:`focal_distance`, about
  0.74 in L2 on the cube) and wrong past it, where the exact answer moves (by 0.18 at L2 1.34):
  no Taylor oracle sees a focal point.

The pseudo-inverse is never formed: :math:`J^+ \\delta` is a least-squares solve through a QR
factorisation :math:`J = Q R` of each sample's ``n x d`` tangent matrix, in float64.
"""

from __future__ import annotations

import math

import attrs
import torch

from manifoldtrain._validation import check_float, check_int, check_tensor
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

__all__ = [
    "LinearisedOracle", "taylor_oracle", "exact_oracle", "OracleResult", "OracleError", "projection_hessian",
    "focal_distance", "FocalDistance",
]


class OracleError(ValueError):
    """The exact oracle's projection did not converge (or cannot be computed) for some samples."""


def _flat_rows(name: str, delta: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``delta`` ``[n, k, *shape]`` as ``[n, k, prod(shape)]`` (checked)."""
    check_tensor(name, delta, shape=(n, None, *shape))
    return delta.reshape(n, delta.shape[1], -1)


class LinearisedOracle:
    """The oracle expanded around each sample's point, from its jets (order 1 or 2).

    Parameters
    ----------
    inputs, targets : Jet
        The jets of the manifold's input and target at the samples' points, of order >= 1
        (order 2 for :meth:`second`), in any local coordinates (the answers do not depend on
        the coordinates' units): ``[n, *input_shape]``, ``[n, d, *input_shape]``, ...

    Raises
    ------
    ValueError
        If the input's derivatives are linearly dependent at a sample (the tangent space has
        fewer than ``d`` dimensions there, so :math:`J^+` is not defined).

    Notes
    -----
    Every method takes perturbations ``[n, k, *input_shape]`` (``k`` per sample) and answers
    in their dtype and device; the factorisation is float64.

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.jet import Jet
    >>> x = Jet(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64))
    >>> y = Jet(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[[2.0]]], dtype=torch.float64))
    >>> oracle = LinearisedOracle(x, y)
    >>> delta = torch.tensor([[[0.5, 7.0, 0.0]]], dtype=torch.float64)  # 0.5 along the manifold, 7 across it
    >>> oracle.first(delta).tolist()
    [[[1.0]]]
    """

    def __init__(self, inputs: Jet, targets: Jet):
        if not isinstance(inputs, Jet) or not isinstance(targets, Jet):
            raise TypeError("inputs, targets: expected Jets")
        if inputs.order < 1 or targets.order < 1:
            raise ValueError(f"inputs, targets: the oracle needs jets of order >= 1, got {inputs.order} and {targets.order}")
        if len(inputs) != len(targets) or inputs.param_dim != targets.param_dim:
            raise ValueError("targets: expected the same samples and local coordinates as inputs")
        self.inputs, self.targets = inputs, targets
        n, d = len(inputs), inputs.param_dim
        self.n, self.d = n, d
        jac = inputs.d1.reshape(n, d, -1).double()  # rows x_i
        self.q, self.r = torch.linalg.qr(jac.transpose(1, 2))  # J = Q R: Q [n, N, d], R [n, d, d]
        diag = torch.diagonal(self.r, dim1=-2, dim2=-1).abs()
        scale = jac.norm(dim=-1).amax(dim=-1)
        bad = ~(diag.amin(dim=-1) > 1e-12 * scale)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"inputs.d1: the input's derivatives are linearly dependent at sample {k} "
                f"({int(bad.sum())} of {n} samples): the tangent space has fewer than {d} dimensions there, "
                "so the oracle is not defined (choose coordinates in which the input moves along every one)"
            )
        self.y1 = targets.d1.reshape(n, d, -1).double()  # rows y_i

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs.shape

    @property
    def target_shape(self) -> tuple[int, ...]:
        return self.targets.shape

    def _flat(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        return _flat_rows(name, delta, self.n, self.input_shape).double()

    def _out(self, flat: torch.Tensor, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return flat.reshape(self.n, flat.shape[1], *shape).to(dtype=like.dtype, device=like.device)

    def _solve(self, c: torch.Tensor) -> torch.Tensor:
        """``R^{-1} c`` for ``c`` ``[n, k, d]`` (rows)."""
        return torch.linalg.solve_triangular(self.r, c.transpose(1, 2), upper=True).transpose(1, 2)

    def coordinates(self, delta: torch.Tensor) -> torch.Tensor:
        """:math:`\\theta_1 = J^+ \\delta`, ``[n, k, d]`` (float64): the local coordinates of
        the nearest point, to first order."""
        return self._solve(self._flat("delta", delta) @ self.q.to(delta.device))

    def tangent_part(self, delta: torch.Tensor) -> torch.Tensor:
        """:math:`P_T \\delta = J J^+ \\delta`, the part of ``delta`` along the manifold
        ``[n, k, *input_shape]``."""
        q = self.q.to(delta.device)
        return self._out((self._flat("delta", delta) @ q) @ q.transpose(1, 2), delta, self.input_shape)

    def first(self, delta: torch.Tensor) -> torch.Tensor:
        """:math:`Y J^+ \\delta`, the first-order change of the right answer ``[n, k, *target_shape]``."""
        return self._out(self.coordinates(delta) @ self.y1.to(delta.device), delta, self.target_shape)

    def first_transpose(self, w: torch.Tensor) -> torch.Tensor:
        """:math:`(Y J^+)^T w` for ``w`` ``[n, k, *target_shape]``: ``[n, k, *input_shape]``."""
        flat = _flat_rows("w", w, self.n, self.target_shape).double()
        c = flat @ self.y1.transpose(1, 2).to(w.device)  # Y^T w, [n, k, d]
        z = torch.linalg.solve_triangular(self.r.transpose(1, 2), c.transpose(1, 2), upper=False).transpose(1, 2)
        return self._out(z @ self.q.transpose(1, 2).to(w.device), w, self.input_shape)

    def second(self, delta: torch.Tensor) -> torch.Tensor:
        """The second-order change of the right answer, :math:`O(x + \\delta) - y` to
        :math:`O(|\\delta|^3)`, ``[n, k, *target_shape]`` (needs jets of order 2)."""
        if self.inputs.order < 2 or self.targets.order < 2:
            raise ValueError("inputs, targets: the second-order oracle needs jets of order 2")
        flat = self._flat("delta", delta)
        q = self.q.to(delta.device)
        theta1 = self._solve(flat @ q)
        normal = flat - (flat @ q) @ q.transpose(1, 2)
        n, d = self.n, self.d
        x2 = self.inputs.d2_matrix().reshape(n, d, d, -1).double().to(delta.device)
        h = torch.einsum("nki,nkj,nijp->nkp", theta1, theta1, x2)  # x_{theta1 theta1}
        b = torch.einsum("nkj,nijp,nkp->nki", theta1, x2, normal)
        jac = q @ self.r  # J [n, N, d]
        rhs = -0.5 * (h @ jac) + b  # [n, k, d]
        # (J^T J)^{-1} rhs = R^{-1} R^{-T} rhs
        z = torch.linalg.solve_triangular(self.r.transpose(1, 2), rhs.transpose(1, 2), upper=False)
        theta2 = torch.linalg.solve_triangular(self.r, z, upper=True).transpose(1, 2)
        y2 = self.targets.d2_matrix().reshape(n, d, d, -1).double().to(delta.device)
        out = (theta1 + theta2) @ self.y1.to(delta.device) + 0.5 * torch.einsum("nki,nkj,nijp->nkp", theta1, theta1, y2)
        return self._out(out, delta, self.target_shape)


def taylor_oracle(inputs: Jet, targets: Jet, delta: torch.Tensor, order: int = 1) -> torch.Tensor:
    """The Taylor oracle :math:`O(x + \\delta)` of order 1 or 2 (see the module docstring).

    Parameters
    ----------
    inputs, targets : Jet
        Jets at the samples' points, of order >= ``order``.
    delta : Tensor
        ``[n, *input_shape]``, one perturbation per sample.
    order : int
        1: :math:`y + Y J^+ \\delta`; 2: with the curvature terms.

    Returns
    -------
    Tensor
        ``[n, *target_shape]``.
    """
    check_int("order", order, minimum=1, maximum=2)
    if not isinstance(inputs, Jet) or not isinstance(targets, Jet):
        raise TypeError("inputs, targets: expected Jets")
    check_tensor("delta", delta, shape=(len(inputs), *inputs.shape))
    oracle = LinearisedOracle(inputs, targets)
    rows = delta.unsqueeze(1)
    change = oracle.first(rows) if order == 1 else oracle.second(rows)
    return targets.value + change[:, 0].to(targets.value)


def _curvature_matrix(r: torch.Tensor, x2: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """:math:`M = R^{-T} S R^{-1}` ``[n, d, d]`` (symmetric, float64) with
    :math:`S_{ij} = \\langle r, x_{ij} \\rangle`: ``r`` is ``R`` of :math:`J = QR` ``[n, d, d]``,
    ``x2`` the second derivatives ``[n, d, d, N]``, ``residual`` ``[n, N]``. The projection's
    Hessian relative to :math:`J^T J` is :math:`I - M`."""
    s = torch.einsum("np,nijp->nij", residual, x2)
    a = torch.linalg.solve_triangular(r.transpose(1, 2), s, upper=False)  # R^{-T} S
    m = torch.linalg.solve_triangular(r.transpose(1, 2), a.transpose(1, 2), upper=False).transpose(1, 2)
    return 0.5 * (m + m.transpose(1, 2))


def _jet_parts(inputs: Jet):
    """``q, r`` of :math:`J^T = QR` and the second derivatives ``[n, d, d, N]``, float64."""
    n, d = len(inputs), inputs.param_dim
    q, r = torch.linalg.qr(inputs.d1.reshape(n, d, -1).double().transpose(1, 2))
    return q, r, inputs.d2_matrix().reshape(n, d, d, -1).double()


def _check_second_order_jet(name: str, inputs: object) -> Jet:
    if not isinstance(inputs, Jet):
        raise TypeError(f"{name}: expected a Jet, got {type(inputs).__name__}")
    if inputs.order < 2:
        raise ValueError(f"{name}: expected the input's jet of order 2 (second derivatives), got order {inputs.order}")
    return inputs


def projection_hessian(inputs: Jet, perturbed: torch.Tensor) -> torch.Tensor:
    """The Hessian of the projection's objective at the jet's point, in its local coordinates.

    For :math:`f(\\theta) = \\tfrac12 \\lVert x(p, \\theta) - \\tilde x \\rVert^2`,

    .. math:: \\nabla^2 f(0) = J^T J + \\sum_k (x - \\tilde x)_k\\, x_{k,ij}
        = J^T J - S, \\qquad S_{ij} = \\langle \\tilde x - x,\\; x_{ij} \\rangle .

    At a stationary point of the projection (:math:`\\tilde x - x` normal to the tangent space)
    it is positive definite at a strict local minimum of the distance, and indefinite past a
    focal point (see :func:`focal_distance`): :func:`exact_oracle`'s second-order test.

    Parameters
    ----------
    inputs : Jet
        The input's jet of order 2 at the points ``[n, *input_shape]``, ``[n, d, ...]``, ``[n, d(d+1)/2, ...]``.
    perturbed : Tensor
        ``[n, *input_shape]``, :math:`\\tilde x`.

    Returns
    -------
    Tensor
        ``[n, d, d]``, float64, symmetric.

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.jet import Jet
    >>> # the unit circle at angle 0: x = (1, 0), x_1 = (0, 1), x_11 = (-1, 0)
    >>> x = Jet(torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[-1.0, 0.0]]]))
    >>> projection_hessian(x, torch.tensor([[-0.5, 0.0]])).tolist()  # moved 1.5 inwards, past the centre
    [[[-0.5]]]
    """
    inputs = _check_second_order_jet("inputs", inputs)
    check_tensor("perturbed", perturbed, shape=(len(inputs), *inputs.shape))
    n = len(inputs)
    residual = (perturbed.double() - inputs.value.double()).reshape(n, -1)
    jac = inputs.d1.reshape(n, inputs.param_dim, -1).double()
    s = torch.einsum("np,nijp->nij", residual, inputs.d2_matrix().reshape(n, inputs.param_dim, inputs.param_dim, -1).double())
    return jac @ jac.transpose(1, 2) - s


@attrs.frozen(eq=False)
class FocalDistance:
    """The smallest focal distance of the manifold at each point (see :func:`focal_distance`).

    Attributes
    ----------
    distance : Tensor
        ``[n]`` float64, :math:`1 / \\kappa_{\\max}` (``inf`` where the manifold is flat).
    normal : Tensor
        ``[n, *input_shape]`` float64, the unit normal of largest curvature: a perturbation
        :math:`s\\, \\nu` with :math:`s >` ``distance`` has a saddle of the distance at the point.
    direction : Tensor
        ``[n, d]`` float64, the tangent direction of that curvature in local coordinates,
        scaled so that :math:`\\lVert J v \\rVert = 1`.
    """

    distance: torch.Tensor
    normal: torch.Tensor
    direction: torch.Tensor


def focal_distance(inputs: Jet, *, starts: int = 8, iterations: int = 30, seed: int = 0) -> FocalDistance:
    """The smallest focal distance (radius of curvature) of the input manifold at each point.

    Along a unit normal :math:`\\nu`, the second fundamental form is
    :math:`S(\\nu)_{ij} = \\langle \\nu, x_{ij} \\rangle`; its principal curvatures are the
    eigenvalues of :math:`M(\\nu) = R^{-T} S(\\nu) R^{-1}` (:math:`J = QR`), and a perturbation
    :math:`s\\, \\nu` passes a focal point, where the clean point stops being a local minimum of
    the distance, at :math:`s = 1 / \\lambda_{\\max}(M(\\nu))`. The smallest focal distance is
    :math:`1 / \\kappa_{\\max}` with

    .. math:: \\kappa_{\\max} = \\max_{\\lVert \\nu \\rVert = 1,\\ \\nu \\perp T} \\lambda_{\\max}(M(\\nu))
        = \\max_{\\lVert J v \\rVert = 1} \\lVert (I - P_T)\\, x_{vv} \\rVert,

    found by alternating maximisation (for :math:`v`, the best :math:`\\nu` is the normal part of
    :math:`x_{vv}`; for :math:`\\nu`, the best :math:`v` the top eigenvector of :math:`M(\\nu)`;
    each step can only increase the curvature) from ``starts`` random directions.

    Parameters
    ----------
    inputs : Jet
        The input's jet of order 2 at the points.
    starts : int
        Random starting directions per point (the largest curvature found is kept).
    iterations : int
        Alternating steps per start.
    seed : int
        Seeds the starting directions.

    Returns
    -------
    FocalDistance
        A lower bound on nothing and an upper bound on the true smallest focal distance: the
        maximisation may stop at a local maximum of the curvature (more ``starts`` guard it).

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.jet import Jet
    >>> # a circle of radius 2 at angle 0: x = (2, 0), x_1 = (0, 2), x_11 = (-2, 0)
    >>> x = Jet(torch.tensor([[2.0, 0.0]]), torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[-2.0, 0.0]]]))
    >>> focal_distance(x).distance.tolist()
    [2.0]
    """
    inputs = _check_second_order_jet("inputs", inputs)
    check_int("starts", starts, minimum=1)
    check_int("iterations", iterations, minimum=1)
    n, d = len(inputs), inputs.param_dim
    q, r, x2 = _jet_parts(inputs)
    g = torch.Generator().manual_seed(seed)
    best = torch.full((n,), -1.0, dtype=torch.float64)
    best_normal = torch.zeros(n, q.shape[1], dtype=torch.float64)
    best_v = torch.zeros(n, d, dtype=torch.float64)
    for _ in range(starts):
        w = torch.randn(n, d, generator=g, dtype=torch.float64).to(q.device)
        for _ in range(iterations):
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
            v = torch.linalg.solve_triangular(r, w.unsqueeze(-1), upper=True).squeeze(-1)
            xvv = torch.einsum("ni,nj,nijp->np", v, v, x2)
            nu = xvv - ((xvv.unsqueeze(1) @ q) @ q.transpose(1, 2)).squeeze(1)
            kappa = nu.norm(dim=1)
            nu = nu / kappa.clamp_min(1e-300).unsqueeze(1)
            w = torch.linalg.eigh(_curvature_matrix(r, x2, nu))[1][:, :, -1]
        better = kappa.cpu() > best
        best = torch.where(better, kappa.cpu(), best)
        best_normal = torch.where(better.unsqueeze(1), nu.cpu(), best_normal)
        best_v = torch.where(better.unsqueeze(1), v.cpu(), best_v)
    distance = torch.where(best > 0, 1.0 / best.clamp_min(1e-300), torch.full_like(best, math.inf))
    return FocalDistance(distance, best_normal.reshape(n, *inputs.shape), best_v)


@attrs.frozen(eq=False)
class OracleResult:
    """The exact oracle's answer for a batch of perturbed inputs.

    Attributes
    ----------
    target : Tensor
        ``[n, *target_shape]``, :math:`O(\\tilde x) = y(p^*)`.
    points : Tensor
        ``[n, *point_shape]``, the nearest points :math:`p^*` found.
    distance : Tensor
        ``[n]``, :math:`\\lVert x(p^*) - \\tilde x \\rVert`, in input units.
    converged : Tensor
        ``[n]`` bool: the residual is orthogonal to the tangent space (to ``tol``) **and** the
        second-order test passed (``minimum``): a local minimum of the distance, never a saddle
        or a maximum. With ``strict=True`` (the default of :func:`exact_oracle`) all true.
    iterations : int
        Gauss-Newton iterations taken (all starts together).
    minimum : Tensor or None
        ``[n]`` bool, the second-order test at :math:`p^*`: ``curvature >= -curvature_tol``.
    curvature : Tensor or None
        ``[n]`` float64, the smallest eigenvalue of the projection's Hessian
        (:func:`projection_hessian`) relative to :math:`J^T J`: 1 on the manifold,
        :math:`1 - \\lVert \\tilde x - x(p^*) \\rVert / \\rho` with :math:`\\rho` the focal
        distance along the residual's direction; negative past a focal point (a saddle).
    escapes : Tensor or None
        ``[n]`` int, saddle escapes taken: > 0 where the stationary point reached from the start
        was a saddle (the perturbation passed a focal point of the manifold) and the answer is
        the nearer of the local minima found on both sides of it. Such an answer is a genuine
        local minimum, nearer than the saddle, but not certified to be the global nearest point.
    """

    target: torch.Tensor
    points: torch.Tensor
    distance: torch.Tensor
    converged: torch.Tensor
    iterations: int
    minimum: torch.Tensor | None = None
    curvature: torch.Tensor | None = None
    escapes: torch.Tensor | None = None


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-5


def _default_curvature_tol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-3


def exact_oracle(
    manifold: Manifold,
    points: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    max_iter: int = 30,
    tol: float | None = None,
    strict: bool = True,
    start: torch.Tensor | None = None,
    start_jet: Jet | None = None,
    max_escapes: int = 3,
    curvature_tol: float | None = None,
    second_order_test: bool = True,
) -> OracleResult:
    """The exact oracle: the target at the point of the manifold nearest to ``perturbed``.

    Gauss-Newton from the clean points: at each step the jets of order 1 at the current point
    :math:`p_k` give :math:`\\Delta\\theta = J^+ (\\tilde x - x(p_k))` (a least-squares solve),
    and :math:`p_{k+1} = \\mathrm{move}(p_k, \\Delta\\theta)`; a step that would increase the
    distance is halved instead; samples still not stationary after ``max_iter`` iterations go
    on for up to ``max_iter`` more with Newton steps from the order-2 jets (Gauss-Newton stalls
    where the distance is large against the radius of curvature). A sample is stationary when the part of its residual along the
    tangent space is below ``tol`` relative to the input,
    :math:`\\lVert P_T (\\tilde x - x(p_k)) \\rVert \\le \\mathrm{tol}\\, \\lVert \\tilde x \\rVert`
    (the first-order optimality condition of the projection).

    **Second-order test.** A stationary point is not always a minimum: a perturbation along a
    normal :math:`\\nu` of size :math:`s` leaves the clean point stationary for every
    :math:`s`, but past the focal distance along :math:`\\nu` (:func:`focal_distance`: the
    radius of curvature, 0.58-0.88 over 200 default 41x41 cube points, median 0.74, below
    the L2 budget 1.0 of adversarial figures) it is a saddle or a maximum of the distance, and a nearer point
    exists. So at every stationary point the jets of order 2 give the Hessian
    :math:`J^T J - \\langle \\tilde x - x, x_{ij} \\rangle` (:func:`projection_hessian`); where
    its smallest eigenvalue relative to :math:`J^T J` (``curvature``) is below
    ``-curvature_tol``, the search *escapes*: along both signs of that eigenvector it takes
    the best of steps of length ``2, 1, 1/2, 1/4, 1/8`` times the distance (in input units)
    that lowers the distance, runs Gauss-Newton again from each side, and keeps the nearer
    answer; at most ``max_escapes`` times. An answer is ``converged`` only if it is stationary
    and passes the test; one reached by an escape says so in :attr:`OracleResult.escapes`
    (a local minimum nearer than the saddle, not certified to be the global nearest point:
    nothing local can certify that).

    Otherwise the minimum found is the one reached from the start: for perturbations small
    against the manifold's curvature it is the nearest point; for large ones the projection
    may not be unique (the oracle itself is then ill-defined) and another, farther local
    minimum may be nearer.

    Parameters
    ----------
    manifold : Manifold
        With a working :meth:`~manifoldtrain.Manifold.move`.
    points : Tensor
        ``[n, *point_shape]``, the clean points (where the search starts).
    perturbed : Tensor
        ``[n, *input_shape]``, the perturbed inputs :math:`\\tilde x`, finite.
    max_iter : int
        Most Gauss-Newton iterations (per start).
    tol : float, optional
        Stationarity tolerance (default 1e-9 in float64, 1e-5 otherwise).
    strict : bool
        Raise :class:`OracleError` if any sample has not converged (default). With ``False``,
        return anyway: :attr:`OracleResult.converged` says which answers to trust.
    start : Tensor, optional
        ``[n, *point_shape]`` points to start the search from instead of ``points`` (e.g. the
        answer for a nearby perturbation, in an attack).
    start_jet : Jet, optional
        The input's jet (order >= 1) at the start points if already known (e.g. the test
        data's), to save one evaluation of the manifold.
    max_escapes : int
        Most saddle escapes per sample (>= 0; 0 tests but never escapes, so a saddle is
        reported as not converged).
    curvature_tol : float, optional
        The second-order test's tolerance on ``curvature`` (default 1e-6 in float64, 1e-3
        otherwise: float32 second derivatives carry relative errors of about 1e-5).
    second_order_test : bool
        Run the second-order test and the escapes (default). ``False`` gives the plain search
        (stationary answers count as converged; :attr:`OracleResult.minimum`, ``curvature`` and
        ``escapes`` are None): cheaper, and right only where every perturbation is known to be
        well inside the focal distance.

    Returns
    -------
    OracleResult

    Raises
    ------
    OracleError
        ``strict`` and some samples did not converge, naming how many, how many are saddles,
        and the largest residual.

    Notes
    -----
    Cost: one extra evaluation of the order-2 jets at the answers (and, for saddles only, a
    line search and a Newton run per side). On 64 default-cube samples in float64, one
    thread: perturbations of L2 norm 0.3 in random directions 0.146 s for the plain
    Gauss-Newton search, 0.215 s with the test (L2 1.0: 0.258 s, 0.322 s; no saddles); 1.2
    times the focal distance along the normal of largest curvature, 2.9 s, all 64 escaped (the
    plain search: 0.002 s and the wrong answer). ``python benchmarks/oracle_focal.py --out
    benchmarks/results/oracle_focal.json`` (``docs/robustness.rst``).
    """
    check_is_manifold("manifold", manifold)
    points = manifold.check_points(points)
    n = points.shape[0]
    check_tensor("perturbed", perturbed, shape=(n, *manifold.input_shape))
    if perturbed.dtype != points.dtype or perturbed.device != points.device:
        raise TypeError(f"perturbed: expected dtype {points.dtype} on {points.device} like points, got "
                        f"{perturbed.dtype} on {perturbed.device}")
    check_int("max_iter", max_iter, minimum=1)
    check_int("max_escapes", max_escapes, minimum=0)
    if not isinstance(second_order_test, bool):
        raise TypeError(f"second_order_test: expected a bool, got {type(second_order_test).__name__}")
    tol = _default_tol(points.dtype) if tol is None else check_float("tol", tol, positive=True)
    ctol = (_default_curvature_tol(points.dtype) if curvature_tol is None
            else check_float("curvature_tol", curvature_tol, nonnegative=True))
    p = points
    if start is not None:
        try:
            p = manifold.check_points(start)
        except (TypeError, ValueError) as err:
            raise type(err)(f"start: {err}") from None
    if p.shape != points.shape:
        raise ValueError(f"start: expected shape {list(points.shape)} like points, got {list(p.shape)}")
    if start_jet is not None:
        if not isinstance(start_jet, Jet) or start_jet.order < 1 or len(start_jet) != n or start_jet.shape != tuple(manifold.input_shape):
            raise ValueError(f"start_jet: expected the input's Jet of order >= 1 at the {n} start points")
        x = Jet(start_jet.value.to(perturbed), start_jet.d1.to(perturbed))
    else:
        x, _ = manifold.jets(p, order=1)
    state = _gauss_newton(manifold, p, x, perturbed, tol, max_iter)
    it = state.iterations
    if not bool(state.stationary.all()):
        # Gauss-Newton stalls where the residual is large against the radius of curvature
        # (its local rate is lambda_max(M), which passes 1 there): go on with Newton steps.
        idx = (~state.stationary).nonzero().flatten()
        sub = state.take(idx)
        retry = _gauss_newton(manifold, sub.points, None, perturbed[idx], tol, max_iter, newton=True)
        it += retry.iterations
        state = state.put(idx, sub.nearer(retry), torch.ones(len(idx), dtype=torch.bool, device=points.device))
    if not second_order_test:
        if strict and not bool(state.stationary.all()):
            bad = ~state.stationary
            raise OracleError(
                f"exact_oracle: the projection did not converge for {int(bad.sum())} of {n} samples in {max_iter} "
                f"Gauss-Newton iterations (largest tangent residual {float(state.relative_tangent[bad].max()):.3g} "
                f"relative, tol {tol:g}); the perturbation may be too large for a unique nearest point: lower it, "
                "or raise max_iter or tol")
        p = state.points
        target = manifold.target(p, torch.zeros(n, manifold.param_dim, dtype=p.dtype, device=p.device))
        return OracleResult(target, p, state.distance.to(points.dtype), state.stationary.clone(), it)
    curvature, direction = _curvature(manifold, state)
    escapes = torch.zeros(n, dtype=torch.int64, device=points.device)
    stuck = torch.zeros(n, dtype=torch.bool, device=points.device)
    for _ in range(max_escapes):
        saddle = state.stationary & (curvature < -ctol) & ~stuck
        if not bool(saddle.any()):
            break
        idx = saddle.nonzero().flatten()
        sub = state.take(idx)
        best, moved = None, torch.zeros(len(idx), dtype=torch.bool, device=points.device)
        for sign in (1.0, -1.0):
            p0, ok = _escape_start(manifold, sub, sign * direction[idx], perturbed[idx])
            moved |= ok
            side = _gauss_newton(manifold, p0, None, perturbed[idx], tol, max_iter, newton=True)
            it += side.iterations
            best = side if best is None else best.nearer(side)
        stuck[idx] = ~moved
        escapes[idx] += moved.to(escapes.dtype)
        state = state.put(idx, best, moved)
        c_new, d_new = _curvature(manifold, state.take(idx))
        curvature[idx], direction[idx] = c_new, d_new
    minimum = curvature >= -ctol
    converged = state.stationary & minimum
    if strict and not bool(converged.all()):
        bad = ~converged
        saddles = int((state.stationary & ~minimum).sum())
        raise OracleError(
            f"exact_oracle: the projection did not converge for {int(bad.sum())} of {n} samples in {max_iter} "
            f"Gauss-Newton iterations ({saddles} of them stationary but a saddle of the distance after {max_escapes} "
            f"escapes; largest tangent residual {float(state.relative_tangent[bad].max()):.3g} relative, tol {tol:g}); "
            "the perturbation may be too large for a unique nearest point: lower it, or raise max_iter, max_escapes or tol"
        )
    p = state.points
    target = manifold.target(p, torch.zeros(n, manifold.param_dim, dtype=p.dtype, device=p.device))
    return OracleResult(target, p, state.distance.to(points.dtype), converged, it, minimum, curvature, escapes)


@attrs.frozen(eq=False)
class _Search:
    """Gauss-Newton state per sample: points, input jet (order 1), residual ``[n, N]`` float64,
    distance, stationarity, the tangent residual relative to the input, iterations."""

    points: torch.Tensor
    inputs: Jet
    residual: torch.Tensor
    distance: torch.Tensor
    stationary: torch.Tensor
    relative_tangent: torch.Tensor
    iterations: int

    def take(self, idx: torch.Tensor) -> "_Search":
        return _Search(self.points[idx], Jet(self.inputs.value[idx], self.inputs.d1[idx]), self.residual[idx],
                       self.distance[idx], self.stationary[idx], self.relative_tangent[idx], self.iterations)

    def nearer(self, other: "_Search") -> "_Search":
        """Per sample the better of two searches: stationary first, then the smaller distance."""
        pick = (other.stationary & ~self.stationary) | ((other.stationary == self.stationary) & (other.distance < self.distance))
        return _where(pick, other, self)

    def put(self, idx: torch.Tensor, other: "_Search", mask: torch.Tensor) -> "_Search":
        """``self`` with samples ``idx`` replaced by ``other`` where ``mask``."""
        mine = _where(mask, other, self.take(idx))
        out = []
        for a, b in zip(self._fields(), mine._fields()):
            a = a.clone()
            a[idx] = b
            out.append(a)
        return _Search(out[0], Jet(out[1], out[2]), *out[3:], self.iterations)

    def _fields(self):
        return (self.points, self.inputs.value, self.inputs.d1, self.residual, self.distance, self.stationary,
                self.relative_tangent)


def _where(pick: torch.Tensor, a: _Search, b: _Search) -> _Search:
    out = [torch.where(pick.reshape(-1, *([1] * (u.dim() - 1))), u, v) for u, v in zip(a._fields(), b._fields())]
    return _Search(out[0], Jet(out[1], out[2]), *out[3:], max(a.iterations, b.iterations))


def _gauss_newton(manifold: Manifold, p: torch.Tensor, x: Jet | None, perturbed: torch.Tensor, tol: float,
                  max_iter: int, newton: bool = False) -> _Search:
    r"""Gauss-Newton on the chart from ``p`` (``x`` the input's jet of order >= 1 there, or ``None``).

    With ``newton``, the jets are of order 2 and the step is Newton's,
    :math:`(J^T J - S)^{-1} J^T r`, wherever the Hessian is safely positive definite (smallest
    eigenvalue relative to :math:`J^T J` above 0.1), Gauss-Newton's elsewhere: Gauss-Newton
    alone converges only linearly, at the rate :math:`\lambda_{\max}(M)`, which nears 1 where
    the distance nears the focal distance (past a saddle)."""
    n = p.shape[0]
    order = 2 if newton else 1
    if x is None or x.order < order:
        x, _ = manifold.jets(p, order=order)
    target_norm = perturbed.reshape(n, -1).double().norm(dim=1).clamp_min(1e-300)
    # Rounding in the rendered input makes distances uncertain by ~eps |x|: a step is kept
    # unless it adds more than that (steps that overshoot add far more and are halved).
    slack = 100 * torch.finfo(p.dtype).eps * target_norm
    res = (perturbed - x.value).reshape(n, -1).double()
    dist = res.norm(dim=1)
    step_size = torch.ones(n, dtype=torch.float64, device=p.device)

    def tangent_residual(x: Jet, res: torch.Tensor):
        jac = x.d1.reshape(n, x.d1.shape[1], -1).double()
        q, r = torch.linalg.qr(jac.transpose(1, 2))
        return (res.unsqueeze(1) @ q).squeeze(1), r  # Q^T r [n, d], R

    it = 0
    c, r = tangent_residual(x, res)
    converged = c.norm(dim=1) <= tol * target_norm
    while not bool(converged.all()) and it < max_iter:
        it += 1
        if newton:
            m = _curvature_matrix(r, x.d2_matrix().reshape(n, r.shape[1], r.shape[1], -1).double(), res)
            values, vectors = torch.linalg.eigh(torch.eye(r.shape[1], dtype=m.dtype, device=m.device) - m)
            safe = values[:, :1] > 0.1
            cn = (vectors @ ((vectors.transpose(1, 2) @ c.unsqueeze(-1)) / values.clamp_min(0.1).unsqueeze(-1))).squeeze(-1)
            c = torch.where(safe, cn, c)
        dtheta = torch.linalg.solve_triangular(r, c.unsqueeze(-1), upper=True).squeeze(-1)
        dtheta = dtheta * (step_size * (~converged)).unsqueeze(1)
        if not bool(torch.isfinite(dtheta).all()):
            bad = int((~torch.isfinite(dtheta).all(dim=1)).sum())
            raise OracleError(f"exact_oracle: the Gauss-Newton step is not finite for {bad} of {n} samples "
                              "(the input's derivatives are degenerate there)")
        p_new, (x_new, _), outside = move_within_domain(manifold, p, dtheta.to(p.dtype), order=order)
        res_new = (perturbed - x_new.value).reshape(n, -1).double()
        dist_new = res_new.norm(dim=1)
        accept = (dist_new <= dist + slack) & ~converged & ~outside
        step_size = torch.where(accept, (step_size * 2).clamp(max=1.0), step_size / 2)
        p = torch.where(accept.reshape(n, *([1] * (p.dim() - 1))), p_new, p)
        x = Jet(*[torch.where(accept.reshape(n, *([1] * (new.dim() - 1))), new, old)
                  for new, old in zip(x_new.components(), x.components())])
        res = torch.where(accept.unsqueeze(1), res_new, res)
        dist = torch.where(accept, dist_new, dist)
        c, r = tangent_residual(x, res)
        converged = c.norm(dim=1) <= tol * target_norm
    x = Jet(x.value, x.d1)
    return _Search(p, x, res, dist, converged, c.norm(dim=1) / target_norm, it)


def _curvature(manifold: Manifold, state: _Search) -> tuple[torch.Tensor, torch.Tensor]:
    """The second-order test at the search's points: ``curvature`` ``[n]`` (the smallest
    eigenvalue of the projection's Hessian relative to :math:`J^T J`) and its direction ``[n, d]``
    in local coordinates (:math:`\\lVert J v \\rVert = 1`), both float64."""
    n = state.points.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, manifold.param_dim, dtype=torch.float64)
    x, _ = manifold.jets(state.points, order=2)
    _, r, x2 = _jet_parts(x)
    values, vectors = torch.linalg.eigh(_curvature_matrix(r, x2, state.residual.to(x2.device)))
    direction = torch.linalg.solve_triangular(r, vectors[:, :, -1:], upper=True).squeeze(-1)
    return (1.0 - values[:, -1]).to(state.distance.device), direction.to(state.distance.device)


_ESCAPE_STEPS = (2.0, 1.0, 0.5, 0.25, 0.125)


def _escape_start(manifold: Manifold, state: _Search, direction: torch.Tensor, perturbed: torch.Tensor):
    """From saddles, the best of steps ``t * direction`` (``t`` in ``_ESCAPE_STEPS`` times the
    distance; ``direction`` with :math:`\\lVert J v \\rVert = 1`) that lowers the distance:
    ``(points, moved)``; samples where none does stay put (``moved`` false)."""
    n = state.points.shape[0]
    p, best, best_p = state.points, state.distance.clone(), state.points.clone()
    for t in _ESCAPE_STEPS:
        theta = (t * state.distance).unsqueeze(1) * direction
        p_new = manifold.move(p, theta.to(p.dtype))
        outside = _outside(manifold, p_new)
        p_new = torch.where(outside.reshape(n, *([1] * (p.dim() - 1))), p, p_new)
        x_new = manifold.input(p_new, torch.zeros(n, manifold.param_dim, dtype=p.dtype, device=p.device))
        dist = (perturbed - x_new).reshape(n, -1).double().norm(dim=1)
        better = ~outside & (dist < best)
        best = torch.where(better, dist, best)
        best_p = torch.where(better.reshape(n, *([1] * (p.dim() - 1))), p_new, best_p)
    return best_p, best < state.distance


def _outside(manifold: Manifold, p: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: which points lie outside the manifold's domain (:meth:`~Manifold.check_domain`)."""
    outside = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    try:
        manifold.check_domain(p)
    except ValueError:
        for i in range(p.shape[0]):
            try:
                manifold.check_domain(p[i : i + 1])
            except ValueError:
                outside[i] = True
    return outside


def move_within_domain(manifold: Manifold, p: torch.Tensor, dtheta: torch.Tensor, order: int = 1):
    """:meth:`Manifold.move <manifoldtrain.Manifold.move>` by ``dtheta`` ``[n, d]`` and the jets of
    ``order`` there (input and target): ``(points, (inputs, targets), outside)``. Samples whose step
    leaves the manifold's domain stay put and are reported in ``outside`` ``[n]`` (bool), so that
    the caller can shorten their step."""
    p_new = manifold.move(p, dtheta)
    outside = _outside(manifold, p_new)
    if bool(outside.any()):
        p_new = torch.where(outside.reshape(-1, *([1] * (p.dim() - 1))), p, p_new)
    return p_new, manifold.jets(p_new, order=order), outside
