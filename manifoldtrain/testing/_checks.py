"""Checks that any :class:`~manifoldtrain.Manifold` can run on itself."""

from __future__ import annotations

import math

import attrs
import torch

from manifoldtrain._validation import check_float, check_int, check_tensor
from manifoldtrain.jet import Jet, num_pairs, triu_pairs
from manifoldtrain.manifold import Manifold

__all__ = [
    "Discrepancy",
    "CheckReport",
    "FiniteDifferenceJets",
    "finite_difference_jets",
    "compare_jets",
    "check_finite_differences",
    "check_default_jets",
    "check_batching",
    "check_conventions",
    "check_move",
    "check_manifold",
    "verify_manifold",
]


@attrs.frozen
class Discrepancy:
    """How far one array is from its reference.

    Attributes
    ----------
    name : str
        What was compared, e.g. ``"input.d2"``.
    max_error : float
        ``max |actual - expected|``.
    scale : float
        ``max |expected|`` (the errors are judged relative to it).
    tolerance : float
        The largest ``max_error`` accepted.
    """

    name: str
    max_error: float
    scale: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        """``max_error / scale`` (``max_error`` if the scale is 0)."""
        return self.max_error / self.scale if self.scale > 0 else self.max_error

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance

    def __str__(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return (
            f"{mark} {self.name:<14} max error {self.max_error:.3e}  scale {self.scale:.3e}  "
            f"relative {self.relative_error:.3e}  tolerance {self.tolerance:.3e}"
        )


@attrs.frozen
class CheckReport:
    """The outcome of one check: a title and the compared arrays.

    Attributes
    ----------
    title : str
        What was checked.
    items : tuple of Discrepancy
        The compared arrays.
    skipped : str or None
        Why the check did not apply to this manifold (e.g. :func:`check_move` on a manifold
        without :meth:`~manifoldtrain.Manifold.move`), or ``None`` if it ran. A skipped
        report has no items and counts as :attr:`passed`: nothing failed, but nothing was
        checked either.
    """

    title: str
    items: tuple[Discrepancy, ...]
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items)

    def __str__(self) -> str:
        if self.skipped is not None:
            return f"{self.title}: skipped ({self.skipped})"
        return "\n".join([f"{self.title}: {'passed' if self.passed else 'FAILED'}", *(f"  {i}" for i in self.items)])

    def raise_if_failed(self) -> CheckReport:
        """Raise ``AssertionError`` with the whole report if any item failed; else return self."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


@attrs.frozen(eq=False)
class FiniteDifferenceJets:
    """Jets by finite differences, with an error estimate of each derivative.

    Attributes
    ----------
    input, target : Jet
        The estimated jets (``value`` is the exact value at ``theta = 0``).
    input_error, target_error : Jet
        Elementwise error estimates of ``d1`` and ``d2`` (``value`` is zero).
    """

    input: Jet
    target: Jet
    input_error: Jet
    target_error: Jet


def ridders(estimates: list[torch.Tensor], shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Richardson-Ridders extrapolation of estimates at steps ``h0 / shrink**k`` with error ``O(h^2)``.

    Returns the elementwise best estimate and its error estimate (Numerical Recipes' dfridr,
    vectorised: each element keeps the tableau entry with the smallest error estimate).
    """
    c2 = shrink * shrink
    prev = [estimates[0]]
    best = estimates[0]
    err = torch.full_like(best, math.inf)
    for k in range(1, len(estimates)):
        row = [estimates[k]]
        fac = c2
        for m in range(1, k + 1):
            row.append((row[m - 1] * fac - prev[m - 1]) / (fac - 1.0))
            fac *= c2
            e = torch.maximum((row[m] - row[m - 1]).abs(), (row[m] - prev[m - 1]).abs())
            better = e < err
            best = torch.where(better, row[m], best)
            err = torch.where(better, e, err)
        prev = row
    return best, err


def central_differences(
    fn, theta: torch.Tensor, order: int, step: float, eval_batch: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Evaluate central-difference quotients at one step size ``step``.

    ``fn`` maps ``[m, d]`` offsets (rows in the order of ``theta``'s repeated batch) to
    ``[m, ...]``; returns the value, d1 ``[n, d, ...]`` and d2 ``[n, P, ...]`` quotients.
    """
    n, d = theta.shape
    eye = torch.eye(d, dtype=theta.dtype, device=theta.device) * step
    offsets = [torch.zeros(1, d, dtype=theta.dtype, device=theta.device), eye, -eye]
    if order >= 2:
        i, j = triu_pairs(d, device=theta.device)
        off = i != j
        ei, ej = eye[i[off]], eye[j[off]]
        offsets += [ei + ej, ei - ej, -ei + ej, -ei - ej]
    offsets_t = torch.cat(offsets)  # [m, d]
    m = offsets_t.shape[0]
    thetas = (theta[:, None, :] + offsets_t[None]).reshape(n * m, d)
    idx = torch.arange(n, device=theta.device).repeat_interleave(m)
    out = torch.cat([fn(idx[s : s + eval_batch], thetas[s : s + eval_batch]) for s in range(0, n * m, eval_batch)])
    out = out.reshape(n, m, *out.shape[1:])
    f0, fp, fm = out[:, 0], out[:, 1 : d + 1], out[:, d + 1 : 2 * d + 1]
    d1 = (fp - fm) / (2.0 * step) if order >= 1 else None
    if order < 2:
        return f0, d1, None
    i, j = triu_pairs(d, device=theta.device)
    q = int((i != j).sum())
    pp, pm, mp, mm = (out[:, 2 * d + 1 + k * q : 2 * d + 1 + (k + 1) * q] for k in range(4))
    d2 = out.new_zeros(n, num_pairs(d), *out.shape[2:])
    diag = i == j
    d2[:, diag] = (fp - 2.0 * f0[:, None] + fm) / (step * step)
    d2[:, ~diag] = (pp - pm - mp + mm) / (4.0 * step * step)
    return f0, d1, d2


def finite_difference_jets(
    manifold: Manifold,
    points: torch.Tensor,
    order: int = 2,
    *,
    step: float = 1e-2,
    shrink: float = 1.6,
    num_steps: int = 8,
    eval_batch: int = 256,
) -> FiniteDifferenceJets:
    """Jets of ``manifold`` at ``points`` by central differences of its chart, in float64.

    Central differences at steps ``step / shrink**k``, ``k < num_steps``, combined by
    Ridders' extrapolation (the step is chosen per element, with an error estimate).
    Second derivatives use the 3-point diagonal and 4-point mixed stencils.

    Parameters
    ----------
    manifold : Manifold
    points : Tensor
        ``[n, *point_shape]``; evaluated in float64 whatever their dtype.
    order : int
        1 or 2.
    step : float
        Largest step in the local coordinates; take it about the scale on which the chart
        changes.
    shrink : float
        Ratio of successive steps (> 1).
    num_steps : int
        Number of step sizes (>= 2).
    eval_batch : int
        Chart evaluations per call of :meth:`~manifoldtrain.Manifold.input`.
    """
    check_int("order", order, minimum=1, maximum=2)
    check_float("step", step, positive=True)
    shrink = check_float("shrink", shrink, positive=True)
    if shrink <= 1:
        raise ValueError(f"shrink: expected a number > 1, got {shrink}")
    check_int("num_steps", num_steps, minimum=2)
    check_int("eval_batch", eval_batch, minimum=1)
    points = manifold.check_points(points).to(torch.float64)
    theta = points.new_zeros(points.shape[0], manifold.param_dim)
    results = {}
    for name, chart in (("input", manifold.input), ("target", manifold.target)):
        fn = lambda idx, th, chart=chart: chart(points[idx], th)  # noqa: E731
        runs = [central_differences(fn, theta, order, step / shrink**k, eval_batch) for k in range(num_steps)]
        value = runs[0][0]
        d1, e1 = ridders([r[1] for r in runs], shrink)
        parts, errs = [value, d1], [torch.zeros_like(value), e1]
        if order == 2:
            d2, e2 = ridders([r[2] for r in runs], shrink)
            parts.append(d2)
            errs.append(e2)
        results[name] = (Jet(*parts), Jet(*errs))
    return FiniteDifferenceJets(results["input"][0], results["target"][0], results["input"][1], results["target"][1])


def compare_jets(
    actual: Jet,
    expected: Jet,
    name: str,
    *,
    rtol: tuple[float, float, float],
    atol: float = 0.0,
    expected_error: Jet | None = None,
    error_factor: float = 10.0,
) -> tuple[Discrepancy, ...]:
    """Compare two jets component by component.

    The tolerance of component ``k`` (value, d1, d2) is
    ``atol + rtol[k] * max|expected_k|``, plus ``error_factor * max(expected_error_k)``
    when an error estimate of the reference is given (finite differences).
    """
    items = []
    labels = ("value", "d1", "d2")
    for k, (a, e) in enumerate(zip(actual.components(), expected.components())):
        if a.shape != e.shape:
            raise AssertionError(f"{name}.{labels[k]}: shape {list(a.shape)} differs from {list(e.shape)}")
        a64, e64 = a.detach().to(torch.float64).cpu(), e.detach().to(torch.float64).cpu()
        scale = float(e64.abs().max()) if e64.numel() else 0.0
        err = float((a64 - e64).abs().max()) if e64.numel() else 0.0
        tol = atol + rtol[k] * scale
        if expected_error is not None and k > 0:
            tol += error_factor * float(expected_error.components()[k].abs().max())
        items.append(Discrepancy(f"{name}.{labels[k]}", err, scale, tol))
    return tuple(items)


def check_finite_differences(
    manifold: Manifold,
    points: torch.Tensor,
    order: int = 2,
    *,
    rtol: tuple[float, float, float] = (1e-12, 1e-6, 1e-5),
    step: float = 1e-2,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check :meth:`~manifoldtrain.Manifold.jets` against :func:`finite_difference_jets`, in float64.

    Passes when every component is within ``rtol[k] * max|reference|`` plus ten times the
    finite-difference error estimate. Raises ``AssertionError`` with the report on failure
    (unless ``raise_on_failure`` is false).
    """
    points64 = manifold.check_points(points).to(torch.float64)
    fd = finite_difference_jets(manifold, points64, order, step=step)
    x, y = manifold.jets(points64, order)
    items = compare_jets(x, fd.input, "input", rtol=rtol, expected_error=fd.input_error)
    items += compare_jets(y, fd.target, "target", rtol=rtol, expected_error=fd.target_error)
    report = CheckReport(f"{type(manifold).__name__}.jets vs finite differences (float64, n={len(points)})", items)
    return report.raise_if_failed() if raise_on_failure else report


def check_default_jets(
    manifold: Manifold,
    points: torch.Tensor,
    order: int = 2,
    *,
    rtol: tuple[float, float, float] = (1e-12, 1e-10, 1e-10),
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check :meth:`~manifoldtrain.Manifold.jets` (e.g. analytic) against the ``torch.func`` default.

    Runs in float64. Meaningful for manifolds that override ``jets``.
    """
    points64 = manifold.check_points(points).to(torch.float64)
    x, y = manifold.jets(points64, order)
    dx, dy = manifold.default_jets(points64, order, chunk_size=3)
    items = compare_jets(x, dx, "input", rtol=rtol) + compare_jets(y, dy, "target", rtol=rtol)
    report = CheckReport(f"{type(manifold).__name__}.jets vs torch.func default (float64, n={len(points)})", items)
    return report.raise_if_failed() if raise_on_failure else report


def check_batching(
    manifold: Manifold,
    points: torch.Tensor,
    order: int = 2,
    *,
    rtol: float = 1e-12,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that jets, inputs and targets of a batch equal those of its samples one by one."""
    points = manifold.check_points(points).to(torch.float64)
    x, y = manifold.jets(points, order)
    singles = [manifold.jets(points[k : k + 1], order) for k in range(len(points))]
    sx = Jet(*(torch.cat(c) for c in zip(*(s[0].components() for s in singles))))
    sy = Jet(*(torch.cat(c) for c in zip(*(s[1].components() for s in singles))))
    tol = (rtol,) * 3
    items = compare_jets(x, sx, "input", rtol=tol) + compare_jets(y, sy, "target", rtol=tol)
    theta = 0.01 * torch.randn(points.shape[0], manifold.param_dim, dtype=points.dtype, generator=torch.Generator().manual_seed(0)).to(points.device)
    for name, chart in (("chart.input", manifold.input), ("chart.target", manifold.target)):
        batch = chart(points, theta)
        one = torch.cat([chart(points[k : k + 1], theta[k : k + 1]) for k in range(len(points))])
        items += compare_jets(Jet(batch), Jet(one), name, rtol=tol)
    report = CheckReport(f"{type(manifold).__name__}: batch equals one by one (n={len(points)})", items)
    return report.raise_if_failed() if raise_on_failure else report


def check_conventions(manifold: Manifold, points: torch.Tensor) -> None:
    """Check shapes, dtypes and devices of ``sample``, ``input``, ``target`` and ``jets``.

    For float32 and float64 and orders 0 to 2: jets follow the shape convention of
    :mod:`manifoldtrain.jet` and the dtype and device of ``points``. Raises
    ``AssertionError`` naming the first violation.
    """
    manifold.check_points(points)
    n, d = points.shape[0], manifold.param_dim
    for dtype in (torch.float32, torch.float64):
        p = points.to(dtype)
        theta = p.new_zeros(n, d)
        for name, fn, shape in (
            ("input", manifold.input, manifold.input_shape),
            ("target", manifold.target, manifold.target_shape),
        ):
            out = fn(p, theta)
            _expect(out, (n, *shape), p, f"{name}({dtype})")
        for order in (0, 1, 2):
            jets = manifold.jets(p, order)
            if not (isinstance(jets, tuple) and len(jets) == 2 and all(isinstance(j, Jet) for j in jets)):
                raise AssertionError(f"jets(order={order}): expected a tuple (input_jet, target_jet) of Jet")
            for jet, shape, name in zip(jets, (manifold.input_shape, manifold.target_shape), ("input", "target")):
                if jet.order != order:
                    raise AssertionError(f"jets(order={order}): {name} jet has order {jet.order}")
                expected = [(n, *shape), (n, d, *shape), (n, num_pairs(d), *shape)]
                for k, comp in enumerate(jet.components()):
                    _expect(comp, expected[k], p, f"jets(order={order}) {name}[{k}] ({dtype})")
        sample = manifold.sample(2, torch.Generator().manual_seed(0), dtype=dtype)
        _expect(sample, (2, *manifold.point_shape), sample, f"sample(dtype={dtype})")
        if sample.dtype != dtype:
            raise AssertionError(f"sample(dtype={dtype}): got dtype {sample.dtype}")
        manifold.check_points(sample)


_MOVE_HALVINGS = 6


def check_move(
    manifold: Manifold,
    points: torch.Tensor | None = None,
    *,
    n: int = 2,
    seed: int = 0,
    scale: float = 0.05,
    rtol: float = 1e-10,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that :meth:`~manifoldtrain.Manifold.move` re-centres the chart, in float64.

    At random ``theta`` (standard normal times ``scale``, drawn with ``seed``) compares
    ``input(move(p, theta), 0)`` with ``input(p, theta)`` and ``target(move(p, theta), 0)``
    with ``target(p, theta)``, and ``move(p, 0)`` with ``p`` through the same charts
    (``input(move(p, 0), 0)`` with ``input(p, 0)``, likewise the target). Each passes within
    ``rtol * max|expected|``. Also checks that ``move`` keeps the shape, dtype and device of
    ``points`` (float32 and float64) and leaves its arguments unchanged.

    Parameters
    ----------
    manifold : Manifold
    points : Tensor, optional
        ``[n, *point_shape]``; evaluated in float64 whatever their dtype. Default: ``n``
        samples drawn with ``seed``.
    n : int
        Number of points to sample when ``points`` is not given.
    seed : int
        Seed of the sampled points and of ``theta``.
    scale : float
        Size of ``theta`` (standard deviation per coordinate). Where the moved points leave
        the manifold's valid range (:meth:`~manifoldtrain.Manifold.check_points` raises),
        ``theta`` is halved, up to 6 times, before they are compared.
    rtol : float
        Relative tolerance.
    raise_on_failure : bool
        Raise ``AssertionError`` with the report on failure (default).

    Returns
    -------
    CheckReport
        With four items; or, if ``move`` raises ``NotImplementedError`` (the default
        :meth:`~manifoldtrain.Manifold.move` when ``point_shape != (param_dim,)``), a
        report with no items whose ``skipped`` gives the reason: nothing to check.

    Raises
    ------
    AssertionError
        On failure (with ``raise_on_failure``), a wrong shape, dtype or device of the result,
        arguments modified in place, or a moved point outside the valid range.
    """
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_float("scale", scale, positive=True)
    check_float("rtol", rtol, nonnegative=True)
    if points is None:
        points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    points = manifold.check_points(points).to(torch.float64)
    title = f"{type(manifold).__name__}.move re-centres the chart (float64, n={len(points)})"
    gen = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(points.shape[0], manifold.param_dim, generator=gen, dtype=torch.float64)
    theta = theta.to(points.device)
    zero = torch.zeros_like(theta)
    before = (points.clone(), theta.clone())
    try:
        moved = manifold.move(points, theta)
    except NotImplementedError as e:
        return CheckReport(title, (), skipped=str(e) or f"{type(manifold).__name__}.move is not implemented")
    if not (torch.equal(points, before[0]) and torch.equal(theta, before[1])):
        raise AssertionError(f"{type(manifold).__name__}.move modified its arguments in place")
    for _ in range(_MOVE_HALVINGS):  # a theta that leaves the valid range is halved
        try:
            manifold.check_points(moved)
            break
        except ValueError:
            theta = theta / 2
            moved = manifold.move(points, theta)
    _expect(moved, points.shape, points, "move(points, theta)")
    for dtype in (torch.float32, torch.float64):
        p = points.to(dtype)
        _expect(manifold.move(p, zero.to(dtype)), p.shape, p, f"move({dtype})")
    at_zero = manifold.move(points, zero)
    items: tuple[Discrepancy, ...] = ()
    for name, chart in (("input", manifold.input), ("target", manifold.target)):
        for label, new, old in (("move", moved, (points, theta)), ("move 0", at_zero, (points, zero))):
            try:
                actual = chart(new, zero)
            except ValueError as e:
                raise AssertionError(
                    f"{type(manifold).__name__}: {name}(move(points, theta), 0) rejected the moved points ({e}); "
                    "if theta took them out of the valid range, pass points farther from its boundary or a "
                    "smaller scale"
                ) from e
            items += compare_jets(Jet(actual), Jet(chart(*old)), f"{name}({label})", rtol=(rtol,) * 3)
    report = CheckReport(title, items)
    return report.raise_if_failed() if raise_on_failure else report


def _expect(t: torch.Tensor, shape, like: torch.Tensor, what: str) -> None:
    check_tensor(what, t, finite=False)
    if tuple(t.shape) != tuple(shape):
        raise AssertionError(f"{what}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise AssertionError(f"{what}: expected {like.dtype} on {like.device}, got {t.dtype} on {t.device}")


def check_manifold(
    manifold: Manifold,
    points: torch.Tensor | None = None,
    *,
    n: int = 2,
    seed: int = 0,
    order: int = 2,
    step: float = 1e-2,
    fd_rtol: tuple[float, float, float] = (1e-12, 1e-6, 1e-5),
) -> list[CheckReport]:
    """Run every contract check on ``manifold`` and return the reports (raising on the first failure).

    Conventions (shapes, dtypes, devices), batching, finite differences in float64, if
    the manifold overrides :meth:`~manifoldtrain.Manifold.jets` agreement with the
    ``torch.func`` default, and :meth:`~manifoldtrain.Manifold.move` (:func:`check_move`;
    its report is marked ``skipped`` if the manifold has no ``move``). ``points`` defaults
    to ``n`` samples drawn with ``seed``.

    Examples
    --------
    >>> from manifoldtrain.manifolds import Cube
    >>> reports = check_manifold(Cube(image_size=9), n=1)  # doctest: +SKIP
    """
    if points is None:
        points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_conventions(manifold, points)
    reports = [
        check_batching(manifold, points, order),
        check_finite_differences(manifold, points, order, rtol=fd_rtol, step=step),
    ]
    if type(manifold).jets is not Manifold.jets:
        reports.append(check_default_jets(manifold, points, order))
    reports.append(check_move(manifold, points, seed=seed))
    return reports


def verify_manifold(manifold: Manifold, where: str = "manifold") -> None:
    """Check a user's manifold against its declared contract before any data is made from it:
    on two sampled points, :func:`check_conventions` (inputs ``[n, *input_shape]``, targets
    ``[n, *target_shape]``, jets of ``param_dim`` coordinates and the right orders, dtypes and
    devices). A fraction of a second for a cheap manifold; the bundled manifolds (tested with
    the library) are skipped.

    Raises
    ------
    ValueError
        Starting with ``where``, naming the first violation (or what the manifold raised).
    """
    if not isinstance(manifold, Manifold):
        raise TypeError(f"{where}: expected a Manifold, got {type(manifold).__name__}")
    if type(manifold).__module__.split(".")[0] == "manifoldtrain":
        return
    name = f"{type(manifold).__module__}:{type(manifold).__qualname__}"
    try:
        points = manifold.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
        check_conventions(manifold, points)
    except AssertionError as err:
        raise ValueError(f"{where}: {name} breaks the Manifold contract: {err}; check it with "
                         "manifoldtrain.testing.check_manifold") from None
    except Exception as err:  # noqa: BLE001 - the user's code: say what it raised, without a traceback
        raise ValueError(f"{where}: {name} failed on two sampled points ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); check it with "
                         "manifoldtrain.testing.check_manifold") from None
