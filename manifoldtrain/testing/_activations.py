"""The check of a :class:`~manifoldtrain.nn.SmoothActivation`'s closed-form derivatives."""

from __future__ import annotations

import torch

from manifoldtrain._validation import check_float, check_tensor
from manifoldtrain.jet import Jet
from manifoldtrain.testing._checks import CheckReport, central_differences, ridders, compare_jets

__all__ = ["check_activation"]


def check_activation(
    activation,
    points: torch.Tensor | None = None,
    *,
    rtol: tuple[float, float, float] = (1e-12, 1e-6, 1e-5),
    atol: float = 1e-12,
    step: float = 1e-2,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check a :class:`~manifoldtrain.nn.SmoothActivation`'s :meth:`derivatives` in float64:
    its value against the layer's ``forward``, its first and second derivatives against central
    differences of ``forward`` (Ridders' extrapolation, as :func:`finite_difference_jets`), and
    that all three have the shape and dtype of their input.

    Derivative training runs an activation through its closed-form derivatives (the Taylor
    pass of :mod:`manifoldtrain.network_jets`), value training through ``forward``: a wrong
    derivative trains the network on wrong targets without any error.

    Parameters
    ----------
    activation : SmoothActivation
        An instance.
    points : Tensor or None
        Where to check (any shape, converted to float64); default 97 points on ``[-6, 6]``.
    rtol : tuple of float
        Relative tolerance of value, first and second derivative, of the largest reference
        over all the points (check a range, not a lone point far out where a derivative is
        below what differences resolve), plus ten times the finite-difference error estimate.
    atol : float
        Absolute tolerance of every comparison (where the reference is zero).
    step : float
        Largest finite-difference step.
    raise_on_failure : bool
        Raise ``AssertionError`` with the report if a comparison fails (default).

    Returns
    -------
    CheckReport

    Examples
    --------
    >>> from manifoldtrain.nn import Softplus
    >>> check_activation(Softplus()).passed
    True
    """
    # duck-typed (a module with derivatives), not isinstance: manifoldtrain.nn runs this check on the
    # activations of users' configs, so this module does not import it
    if not (isinstance(activation, torch.nn.Module) and callable(getattr(activation, "derivatives", None))):
        raise TypeError(f"activation: expected a SmoothActivation instance, got {type(activation).__name__}")
    step = check_float("step", step, positive=True)
    atol = check_float("atol", atol, nonnegative=True)
    if not isinstance(rtol, (tuple, list)) or len(rtol) != 3:
        raise TypeError(f"rtol: expected three tolerances (value, first, second derivative), got {rtol!r}")
    rtol = tuple(check_float(f"rtol[{k}]", r, nonnegative=True) for k, r in enumerate(rtol))
    if points is None:
        v = torch.linspace(-6.0, 6.0, 97, dtype=torch.float64)
    else:
        v = check_tensor("points", points).detach().to("cpu", torch.float64).reshape(-1)
        if v.numel() == 0:
            raise ValueError("points: expected at least one point, got an empty tensor")
    name = type(activation).__name__
    with torch.no_grad():
        parts = activation.derivatives(v)
        if not (isinstance(parts, tuple) and len(parts) == 3 and all(isinstance(p, torch.Tensor) for p in parts)):
            raise AssertionError(f"{name}.derivatives must return a tuple of three tensors (f, f', f''), got "
                                 f"{type(parts).__name__}")
        for label, p in zip(("f", "f'", "f''"), parts):
            if p.shape != v.shape or p.dtype != v.dtype:
                raise AssertionError(f"{name}.derivatives: {label} has shape {list(p.shape)} and dtype {p.dtype} for "
                                     f"an input of shape {list(v.shape)} and dtype {v.dtype}; expected the same")
        fn = lambda idx, th: activation(v[idx] + th[:, 0])  # noqa: E731
        theta = v.new_zeros(len(v), 1)
        shrink = 1.6
        runs = [central_differences(fn, theta, 2, step / shrink**k, eval_batch=4096) for k in range(8)]
    d1, e1 = ridders([r[1] for r in runs], shrink)
    d2, e2 = ridders([r[2] for r in runs], shrink)
    f, df, d2f = parts
    items = compare_jets(Jet(f, df[:, None], d2f[:, None]), Jet(runs[0][0], d1, d2), "derivatives", rtol=rtol, atol=atol,
                         expected_error=Jet(torch.zeros_like(f), e1, e2))
    report = CheckReport(f"{name}.derivatives vs forward and its finite differences (float64, n={len(v)})", items)
    return report.raise_if_failed() if raise_on_failure else report
