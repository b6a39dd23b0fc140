"""The error operator of a trained network, and its spectral norm.

At a sample, to first order in a perturbation :math:`\\delta` of the input, the network's
error against the oracle is :math:`e(x) + E \\delta` with the *error operator*

.. math:: E = N'(x) - Y J^+ \\qquad (m \\times n).

Its spectral norm :math:`\\lVert E \\rVert_2` is the worst-case error amplification. With the
tangent projector :math:`P_T = J J^+` it splits into

* the **invariance part** :math:`E P_T`: the network ignores (or misjudges) a real change
  along the manifold, where the right answer does move;
* the **sensitivity part** :math:`E (I - P_T) = N'(x) (I - P_T)`: the network reacts to a
  change that leaves the manifold, where the right answer does not move (to first order).

:class:`ErrorOperator` applies :math:`E`, :math:`E^T` and both parts through ``torch.func``
``jvp`` and ``vjp`` of the network, batched over samples and over ``k`` vectors per sample;
the ``m x n`` matrix is formed only by :meth:`ErrorOperator.matrix`. :func:`spectral_norm`
finds the top singular values and the worst-case perturbation by subspace iteration.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch.func import functional_call, jvp, vjp, vmap

from manifoldtrain._validation import check_cpu_generator, check_int, check_tensor
from manifoldtrain.jet import Jet
from manifoldtrain.robustness.oracle import LinearisedOracle

__all__ = ["ErrorOperator", "SpectralNorm", "spectral_norm", "detached", "l2_ball_step"]


def l2_ball_step(delta: torch.Tensor, grad: torch.Tensor, step: float, radius: float) -> torch.Tensor:
    """One step of projected gradient ascent in the L2 ball, per sample: ``delta`` moves by
    ``step`` along ``grad`` normalised (``[n, *input_shape]`` both), then is projected back on the
    ball of ``radius``. The step of both the attack
    (:func:`~manifoldtrain.robustness.adversarial_error`) and adversarial training
    (:func:`~manifoldtrain.objectives.robust.pgd_perturbations`)."""
    n = delta.shape[0]
    ball = lambda t: t.reshape(n, *([1] * (delta.dim() - 1)))  # noqa: E731
    norm = lambda t: t.reshape(n, -1).norm(dim=1).clamp_min(1e-30)  # noqa: E731
    delta = delta + step * grad / ball(norm(grad))
    return delta * ball((radius / norm(delta)).clamp(max=1.0))


def detached(model: torch.nn.Module):
    """``model`` as a pure function of its input, with its parameters detached (no gradients
    flow to them): for analysis under ``torch.func`` transforms."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def fn(x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,))

    return fn


class ErrorOperator:
    """:math:`E = N'(x) - Y J^+` of ``model`` at each sample, as a batched linear operator.

    Parameters
    ----------
    model : nn.Module
        The network, sample-wise (output ``k`` depends on input ``k`` only); any layers that
        ``torch.func`` can transform.
    inputs, targets : Jet
        Jets of order >= 1 at the samples (raw input units: :math:`E` maps input perturbations
        to target units), in the model's dtype and device.

    Notes
    -----
    Vectors are batched as ``[n, k, *input_shape]`` (perturbations) and ``[n, k, *output_shape]``
    (errors). :meth:`invariance_part` and :meth:`sensitivity_part` are operators of the same kind.

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.jet import Jet
    >>> model = torch.nn.Linear(3, 1, bias=False).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.5, 0.0]]))
    >>> x = Jet(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64))
    >>> y = Jet(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[[2.0]]], dtype=torch.float64))
    >>> E = ErrorOperator(model, x, y)
    >>> E.matrix().tolist()  # N' = [1, 0.5, 0], Y J^+ = [2, 0, 0]
    [[[-1.0, 0.5, 0.0]]]
    >>> round(float(spectral_norm(E).value[0]), 6), round(float(spectral_norm(E.sensitivity_part()).value[0]), 6)
    (1.118034, 0.5)
    """

    def __init__(self, model: torch.nn.Module, inputs: Jet, targets: Jet, *, _part: str = "full", _oracle=None, _fn=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(inputs, Jet) or not isinstance(targets, Jet):
            raise TypeError("inputs, targets: expected Jets")
        param = next(iter(model.parameters()), None)
        if param is not None and (param.dtype != inputs.dtype or param.device != inputs.device):
            raise TypeError(f"inputs: expected dtype {param.dtype} on {param.device} like the model's parameters, "
                            f"got {inputs.dtype} on {inputs.device}")
        check_tensor("inputs.value", inputs.value)
        self.model, self.inputs, self.targets = model, inputs, targets
        self.oracle = _oracle if _oracle is not None else LinearisedOracle(inputs, targets)
        self._fn = _fn if _fn is not None else detached(model)
        self._part = _part
        self._vjp = None

    @property
    def n(self) -> int:
        return len(self.inputs)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.targets.shape

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        if self._part == "invariance":
            return self.oracle.tangent_part(v)
        if self._part == "sensitivity":
            return v - self.oracle.tangent_part(v)
        return v

    def _same(self, part: str) -> ErrorOperator:
        return ErrorOperator(self.model, self.inputs, self.targets, _part=part, _oracle=self.oracle, _fn=self._fn)

    def invariance_part(self) -> ErrorOperator:
        """:math:`E P_T`: the error along the manifold (rank at most ``d``)."""
        return self._same("invariance")

    def sensitivity_part(self) -> ErrorOperator:
        """:math:`E (I - P_T) = N'(x)(I - P_T)`: the error across the manifold."""
        return self._same("sensitivity")

    def network(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`N'(x)\\, v` for ``v`` ``[n, k, *input_shape]``: ``[n, k, *output_shape]``."""
        check_tensor("v", v, shape=(self.n, None, *self.input_shape))
        x = self.inputs.value
        return vmap(lambda t: jvp(self._fn, (x,), (t,))[1], in_dims=1, out_dims=1)(v.to(x))

    def network_transpose(self, w: torch.Tensor) -> torch.Tensor:
        """:math:`N'(x)^T w` for ``w`` ``[n, k, *output_shape]``: ``[n, k, *input_shape]``."""
        check_tensor("w", w, shape=(self.n, None, *self.output_shape))
        if self._vjp is None:
            self._vjp = vjp(self._fn, self.inputs.value)[1]
        return vmap(lambda c: self._vjp(c)[0], in_dims=1, out_dims=1)(w.to(self.inputs.value))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """The operator on ``v`` ``[n, k, *input_shape]``: ``[n, k, *output_shape]``."""
        v = self._project(v)
        return self.network(v) - self.oracle.first(v)

    def apply_transpose(self, w: torch.Tensor) -> torch.Tensor:
        """Its transpose on ``w`` ``[n, k, *output_shape]``: ``[n, k, *input_shape]``."""
        out = self.network_transpose(w) - self.oracle.first_transpose(w)
        return self._project(out)

    def matrix(self) -> torch.Tensor:
        """The operator as ``[n, m, N]`` matrices (``m`` outputs, ``N`` input entries): ``m``
        products with the transpose. Only for small problems and tests."""
        m = math.prod(self.output_shape)
        eye = torch.eye(m, dtype=self.inputs.dtype, device=self.inputs.device)
        w = eye.expand(self.n, m, m).reshape(self.n, m, *self.output_shape)
        return self.apply_transpose(w).reshape(self.n, m, -1)


@attrs.frozen(eq=False)
class SpectralNorm:
    """Top singular values of an operator, per sample, and the worst-case perturbations.

    Attributes
    ----------
    value : Tensor
        ``[n]``, :math:`\\lVert E \\rVert_2` (the largest singular value).
    values : Tensor
        ``[n, b]``, the top ``b`` singular values found (descending).
    vectors : Tensor
        ``[n, b, *input_shape]``, the matching right singular vectors (unit norm): the
        perturbation directions the operator amplifies most, in order.
    iterations : int
        Subspace iterations taken.
    """

    value: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor
    iterations: int


def spectral_norm(
    operator: ErrorOperator,
    *,
    block: int | None = None,
    iterations: int = 30,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> SpectralNorm:
    """Top singular values and vectors of ``operator`` at every sample by subspace iteration.

    Each iteration applies the transpose to ``block`` vectors of the output space, makes the
    results orthonormal (a QR in the input space), applies the operator, and takes the SVD of
    the small ``m x block`` image (Rayleigh-Ritz). It stops when the top value changes by less
    than ``tol`` relative. With ``block >= m`` (the default when ``m <= 16``), the first
    iteration spans the operator's whole row space, so the answer is exact after it (the
    rank of :math:`E` is at most ``m``).

    Parameters
    ----------
    operator : ErrorOperator
        Or anything with ``n``, ``input_shape``, ``output_shape``, ``apply`` and ``apply_transpose``.
    block : int, optional
        Vectors per sample (default: ``m`` if ``m <= 16``, else 8).
    iterations : int
        Most iterations.
    tol : float
        Relative change of the top value that counts as converged.
    generator : torch.Generator, optional
        Draws the random start (a CPU generator; the draws are moved to the data's device).
    start : Tensor, optional
        ``[n, block, *output_shape]`` start vectors in the output space (e.g. from a previous
        call), instead of random ones.

    Returns
    -------
    SpectralNorm
    """
    n, m = operator.n, math.prod(operator.output_shape)
    block = (m if m <= 16 else 8) if block is None else check_int("block", block, minimum=1)
    block = min(block, m)
    check_int("iterations", iterations, minimum=1)
    check_cpu_generator("generator", generator)
    like = operator.inputs.value
    if start is None:
        w = torch.randn(n, block, m, generator=generator, dtype=torch.float64).to(dtype=like.dtype, device=like.device)
    else:
        check_tensor("start", start, shape=(n, block, *operator.output_shape))
        w = start.reshape(n, block, m).to(like)
    previous = None
    it = 0
    for it in range(1, iterations + 1):
        v = operator.apply_transpose(w.reshape(n, block, *operator.output_shape)).reshape(n, block, -1)
        q, _ = torch.linalg.qr(v.transpose(1, 2).double())  # [n, N, block]
        v = q.transpose(1, 2).to(like)
        image = operator.apply(v.reshape(n, block, *operator.input_shape)).reshape(n, block, m)
        u, s, vh = torch.linalg.svd(image.transpose(1, 2).double(), full_matrices=False)  # [n, m, block]
        w = u.transpose(1, 2).to(like)  # the top left singular vectors: the next start
        top = s[:, 0]
        if block == m and it >= 1:
            break  # the row space is spanned: exact
        if previous is not None and bool(((top - previous).abs() <= tol * top.clamp_min(1e-300)).all()):
            break
        previous = top
    vectors = (vh.to(like) @ v)  # right singular vectors in the input space, [n, block, N]
    return SpectralNorm(top.to(like.dtype), s.to(like.dtype), vectors.reshape(n, block, *operator.input_shape), it)
