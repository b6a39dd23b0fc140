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

The pseudo-inverse is never formed: :math:`J^+ \\delta` is a least-squares solve through a QR
factorisation :math:`J = Q R` of each sample's ``n x d`` tangent matrix, in float64.
"""

from __future__ import annotations


import attrs
import torch

from manifoldtrain._validation import check_float, check_int, check_tensor
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

__all__ = ["LinearisedOracle", "taylor_oracle", "exact_oracle", "OracleResult", "OracleError"]


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
        n, k, d = self.n, flat.shape[1], self.d
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
        ``[n]`` bool. With ``strict=True`` (the default of :func:`exact_oracle`) all true.
    iterations : int
        Gauss-Newton iterations taken.
    """

    target: torch.Tensor
    points: torch.Tensor
    distance: torch.Tensor
    converged: torch.Tensor
    iterations: int


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-5


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
) -> OracleResult:
    """The exact oracle: the target at the point of the manifold nearest to ``perturbed``.

    Gauss-Newton from the clean points: at each step the jets of order 1 at the current point
    :math:`p_k` give :math:`\\Delta\\theta = J^+ (\\tilde x - x(p_k))` (a least-squares solve),
    and :math:`p_{k+1} = \\mathrm{move}(p_k, \\Delta\\theta)`; a step that would increase the
    distance is halved instead. A sample has converged when the part of its residual along the
    tangent space is below ``tol`` relative to the input,
    :math:`\\lVert P_T (\\tilde x - x(p_k)) \\rVert \\le \\mathrm{tol}\\, \\lVert \\tilde x \\rVert`
    (the first-order optimality condition of the projection).

    The minimum found is the one reached from the clean point: for perturbations small against
    the manifold's curvature it is the nearest point; for large ones the projection may not be
    unique (the oracle itself is then ill-defined).

    Parameters
    ----------
    manifold : Manifold
        With a working :meth:`~manifoldtrain.Manifold.move`.
    points : Tensor
        ``[n, *point_shape]``, the clean points (where the search starts).
    perturbed : Tensor
        ``[n, *input_shape]``, the perturbed inputs :math:`\\tilde x`, finite.
    max_iter : int
        Most Gauss-Newton iterations.
    tol : float, optional
        Convergence tolerance (default 1e-9 in float64, 1e-5 otherwise).
    strict : bool
        Raise :class:`OracleError` if any sample has not converged (default). With ``False``,
        return anyway: :attr:`OracleResult.converged` says which answers to trust.
    start : Tensor, optional
        ``[n, *point_shape]`` points to start the search from instead of ``points`` (e.g. the
        answer for a nearby perturbation, in an attack).
    start_jet : Jet, optional
        The input's jet (order >= 1) at the start points if already known (e.g. the test
        data's), to save one evaluation of the manifold.

    Returns
    -------
    OracleResult

    Raises
    ------
    OracleError
        ``strict`` and some samples did not converge, naming how many and the largest residual.
    """
    check_is_manifold("manifold", manifold)
    points = manifold.check_points(points)
    n = points.shape[0]
    check_tensor("perturbed", perturbed, shape=(n, *manifold.input_shape))
    if perturbed.dtype != points.dtype or perturbed.device != points.device:
        raise TypeError(f"perturbed: expected dtype {points.dtype} on {points.device} like points, got "
                        f"{perturbed.dtype} on {perturbed.device}")
    check_int("max_iter", max_iter, minimum=1)
    tol = _default_tol(points.dtype) if tol is None else check_float("tol", tol, positive=True)
    target_norm = perturbed.reshape(n, -1).double().norm(dim=1).clamp_min(1e-300)
    # Rounding in the rendered input makes distances uncertain by ~eps |x|: a step is kept
    # unless it adds more than that (steps that overshoot add far more and are halved).
    slack = 100 * torch.finfo(points.dtype).eps * target_norm
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
    res = (perturbed - x.value).reshape(n, -1).double()
    dist = res.norm(dim=1)
    step_size = torch.ones(n, dtype=torch.float64, device=points.device)
    def tangent_residual(x: Jet, res: torch.Tensor):
        jac = x.d1.reshape(n, x.d1.shape[1], -1).double()
        q, r = torch.linalg.qr(jac.transpose(1, 2))
        return (res.unsqueeze(1) @ q).squeeze(1), r  # Q^T r [n, d], R

    it = 0
    c, r = tangent_residual(x, res)
    converged = c.norm(dim=1) <= tol * target_norm
    while not bool(converged.all()) and it < max_iter:
        it += 1
        dtheta = torch.linalg.solve_triangular(r, c.unsqueeze(-1), upper=True).squeeze(-1)
        dtheta = dtheta * (step_size * (~converged)).unsqueeze(1)
        if not bool(torch.isfinite(dtheta).all()):
            bad = int((~torch.isfinite(dtheta).all(dim=1)).sum())
            raise OracleError(f"exact_oracle: the Gauss-Newton step is not finite for {bad} of {n} samples "
                              "(the input's derivatives are degenerate there)")
        p_new, (x_new, _), outside = move_within_domain(manifold, p, dtheta.to(p.dtype))
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
    if strict and not bool(converged.all()):
        bad = ~converged
        raise OracleError(
            f"exact_oracle: the projection did not converge for {int(bad.sum())} of {n} samples in {max_iter} "
            f"Gauss-Newton iterations (largest tangent residual {float((c.norm(dim=1) / target_norm)[bad].max()):.3g} "
            f"relative, tol {tol:g}); the perturbation may be too large for a unique nearest point: lower it, or raise "
            "max_iter or tol"
        )
    target = manifold.target(p, torch.zeros(n, manifold.param_dim, dtype=p.dtype, device=p.device))
    return OracleResult(target, p, dist.to(points.dtype), converged, it)


def move_within_domain(manifold: Manifold, p: torch.Tensor, dtheta: torch.Tensor):
    """:meth:`Manifold.move <manifoldtrain.Manifold.move>` by ``dtheta`` ``[n, d]`` and the jets of
    order 1 there (input and target): ``(points, (inputs, targets), outside)``. Samples whose step
    leaves the manifold's domain stay put and are reported in ``outside`` ``[n]`` (bool), so that
    the caller can shorten their step."""
    outside = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    p_new = manifold.move(p, dtheta)
    try:
        manifold.check_domain(p_new)
    except ValueError:
        for i in range(p.shape[0]):
            try:
                manifold.check_domain(p_new[i : i + 1])
            except ValueError:
                outside[i] = True
        p_new = torch.where(outside.reshape(-1, *([1] * (p.dim() - 1))), p, p_new)
    return p_new, manifold.jets(p_new, order=1), outside
