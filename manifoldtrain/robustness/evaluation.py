"""Robustness of a trained network, by the evaluation protocol of ``DESIGN.md``.

* :func:`amplification`: per sample, :math:`\\lVert E \\rVert_2` and its invariance and
  sensitivity parts (the medians over samples are the reported figures);
* :func:`noisy_rmse`: RMSE on inputs with Gaussian noise of level ``s`` per entry, against the
  exact oracle and, separately, against the clean target;
* :func:`adversarial_error`: the error :math:`\\lVert N(x + \\delta) - O(x + \\delta) \\rVert`
  maximised over :math:`\\lVert \\delta \\rVert_2 \\le \\epsilon` by projected gradient ascent,
  scored with the exact oracle;
* :func:`evaluate_robustness`: all of them, as :class:`RobustnessMetrics`;
  :class:`Robustness` the same as a :class:`~manifoldtrain.evaluation.Metric` for the Trainer.

Errors are in target units. RMSE-like figures (``noisy_rmse``, ``adversarial_error``) are root
mean squares over samples and outputs, comparable with the clean test RMSE.
"""

from __future__ import annotations

import math
import warnings

import attrs
import torch
from torch.func import vjp

from manifoldtrain._validation import attrs_validator, check_int, check_levels
from manifoldtrain.data import JetDataset, check_dataset
from manifoldtrain.evaluation import Metric
from manifoldtrain.manifold import Manifold, check_is_manifold
from manifoldtrain.robustness.operator import ErrorOperator, detached, l2_ball_step, spectral_norm
from manifoldtrain.robustness.oracle import LinearisedOracle, exact_oracle, move_within_domain

__all__ = [
    "RobustnessMetrics", "Amplification", "amplification", "invariant_amplification", "noisy_rmse",
    "adversarial_error", "evaluate_robustness", "Robustness",
]


def _model_like(model: torch.nn.Module, data: JetDataset) -> JetDataset:
    param = next(iter(model.parameters()))
    return data.to(device=param.device, dtype=param.dtype)


def _batches(data: JetDataset, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield data.subset(slice(start, start + batch_size))


def _check_manifold(manifold: object, data: JetDataset) -> Manifold:
    check_is_manifold("manifold", manifold)
    if tuple(data.points.shape[1:]) != tuple(manifold.point_shape) or tuple(data.inputs.shape) != tuple(manifold.input_shape):
        raise ValueError(
            f"data: its points {list(data.points.shape[1:])} and inputs {list(data.inputs.shape)} do not fit "
            f"{type(manifold).__name__} (points {list(manifold.point_shape)}, inputs {list(manifold.input_shape)}): "
            "is it data of another manifold?"
        )
    return manifold


@attrs.frozen(eq=False)
class Amplification:
    """Per-sample worst-case amplification and its parts, in target units per input norm.

    Attributes
    ----------
    full : Tensor
        ``[n]``, :math:`\\lVert E \\rVert_2`.
    invariance : Tensor
        ``[n]``, :math:`\\lVert E P_T \\rVert_2`.
    sensitivity : Tensor
        ``[n]``, :math:`\\lVert E (I - P_T) \\rVert_2`.
    vectors : Tensor
        ``[n, *input_shape]``, the worst-case perturbation direction of each sample (unit norm).
    """

    full: torch.Tensor
    invariance: torch.Tensor
    sensitivity: torch.Tensor
    vectors: torch.Tensor

    def medians(self) -> dict[str, float]:
        """``{"amplification", "invariance_part", "sensitivity_part"}``: medians over samples."""
        return {
            "amplification": float(self.full.median()),
            "invariance_part": float(self.invariance.median()),
            "sensitivity_part": float(self.sensitivity.median()),
        }


def amplification(model: torch.nn.Module, data: JetDataset, *, batch_size: int = 128, seed: int = 0) -> Amplification:
    """:math:`\\lVert E \\rVert_2`, :math:`\\lVert E P_T \\rVert_2` and :math:`\\lVert E(I - P_T) \\rVert_2`
    at every sample of ``data`` (jets of order >= 1), with the worst-case directions."""
    check_dataset("data", data, order=1)
    check_int("batch_size", batch_size, minimum=1)
    data = _model_like(model, data)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"full": [], "invariance": [], "sensitivity": [], "vectors": []}
    for b in _batches(data, batch_size):
        op = ErrorOperator(model, b.inputs, b.targets)
        full = spectral_norm(op, generator=g)
        parts["full"].append(full.value)
        parts["vectors"].append(full.vectors[:, 0])
        parts["invariance"].append(spectral_norm(op.invariance_part(), generator=g).value)
        parts["sensitivity"].append(spectral_norm(op.sensitivity_part(), generator=g).value)
    return Amplification(*(torch.cat(parts[k]).detach().cpu() for k in ("full", "invariance", "sensitivity", "vectors")))


class _Invariant(torch.nn.Module):
    """A perfectly invariant network of the data's shapes: ``N(x) = 0``, so ``N'(x) = 0``."""

    def __init__(self, input_shape: tuple[int, ...], output_shape: tuple[int, ...]):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.zero = torch.nn.Parameter(torch.zeros(()))  # gives the network a dtype and device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.zero * x.flatten(1).sum(1)).reshape(-1, *[1] * len(self.output_shape)).expand(
            -1, *self.output_shape)


def invariant_amplification(data: JetDataset, *, batch_size: int = 128, seed: int = 0) -> Amplification:
    """The amplification of a perfectly invariant network (:math:`N' = 0`) on ``data``.

    Then :math:`E = -Y J^+`, so :attr:`Amplification.full` is :math:`\\lVert Y J^+ \\rVert_2`
    per sample, all of it in the invariance part: the robustness figure that invariance
    training approaches as its strength grows. A network below it reacts to real changes
    along the manifold less than an invariant one is wrong about them.

    Parameters
    ----------
    data : JetDataset
        Jets of order >= 1 (``[n, *input_shape]`` inputs, ``[n, 1, ...]`` first derivatives).

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.data import JetDataset
    >>> from manifoldtrain.jet import Jet
    >>> x = Jet(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64))
    >>> y = Jet(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[[2.0]]], dtype=torch.float64))
    >>> round(float(invariant_amplification(JetDataset(torch.zeros(1, 1), x, y)).full[0]), 6)  # ||Y J^+|| = 2
    2.0
    """
    check_dataset("data", data, order=1)
    model = _Invariant(data.inputs.shape, data.targets.shape).to(device=data.inputs.device, dtype=data.inputs.dtype)
    return amplification(model, data, batch_size=batch_size, seed=seed)


def noisy_rmse(
    model: torch.nn.Module,
    manifold: Manifold,
    data: JetDataset,
    levels,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[float, dict[str, float]]:
    """RMSE on noisy inputs :math:`\\tilde x = x + s g` (``g`` standard normal per entry).

    Returns, per level ``s``, ``{"oracle": ..., "clean": ..., "failed": k, "focal": j}``: the
    RMSE of :math:`N(\\tilde x)` against the exact oracle :math:`O(\\tilde x)` and against the
    clean target ``y``, the number of samples where the exact oracle did not converge to a
    minimum (left out of both, with a warning; 0 normally), and the number whose perturbation
    passed a focal point of the manifold (the stationary point reached from the clean point
    was a saddle, see :func:`~manifoldtrain.robustness.exact_oracle`): they are scored against
    the nearer local minimum found past it, not certified to be the nearest point (kept, with
    a warning; 0 at the default levels on the cube).
    """
    check_dataset("data", data)
    manifold = _check_manifold(manifold, data)
    levels = check_levels("levels", levels)
    data = _model_like(model, data)
    fn = detached(model)
    out = {}
    for level in levels:
        g = torch.Generator().manual_seed(seed)
        sums = {"oracle": 0.0, "clean": 0.0}
        count, failed, focal = 0, 0, 0
        for b in _batches(data, batch_size):
            x = b.inputs.value
            noisy = x + level * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
            with torch.no_grad():
                pred = fn(noisy)
            if level > 0:
                res = exact_oracle(manifold, b.points, noisy, strict=False, start_jet=b.inputs)
                ok, target = res.converged, res.target
                focal += int((ok & (res.escapes > 0)).sum())
            else:
                ok, target = torch.ones(len(b), dtype=torch.bool, device=x.device), b.targets.value
            failed += int((~ok).sum())
            sums["oracle"] += float((pred - target)[ok].double().pow(2).sum())
            sums["clean"] += float((pred - b.targets.value)[ok].double().pow(2).sum())
            count += int(ok.sum()) * math.prod(b.targets.shape)
        if failed:
            warnings.warn(f"noisy_rmse: the exact oracle did not converge for {failed} of {len(data)} samples at noise "
                          f"level {level:g}; they are left out", stacklevel=2)
        if focal:
            _warn_focal("noisy_rmse", focal, len(data), f"noise level {level:g}")
        out[level] = {k: math.sqrt(v / count) if count else float("nan") for k, v in sums.items()} | {
            "failed": failed, "focal": focal}
    return out


def adversarial_error(
    model: torch.nn.Module,
    manifold: Manifold,
    data: JetDataset,
    budgets,
    *,
    steps: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """The largest error against the exact oracle within an L2 ball, by projected gradient ascent.

    For each sample and budget :math:`\\epsilon`: start along the worst-case direction of the
    error operator (:func:`amplification`'s, with the sign that adds to the clean error), then
    ``steps`` normalised gradient steps of length :math:`\\epsilon / 4` on
    :math:`\\tfrac12 \\lVert N(x + \\delta) - O(x + \\delta) \\rVert^2`, each projected back on the
    ball. The gradient uses :math:`N'(x + \\delta)^T e - (Y J^+)^T e` at the current nearest point
    (the oracle's derivative to first order); the oracle inside the ascent starts from the
    previous step's nearest point (one Gauss-Newton step per ascent step), and every kept
    perturbation is re-scored with the exact oracle started from the clean point. The best perturbation found per sample is kept.

    Returns, per budget, ``{"rms": ..., "median": ..., "failed": k, "focal": j}``: the root
    mean square over samples and outputs of the adversarial error (comparable with the test
    RMSE), the median over samples of its norm, the samples left out because the exact oracle
    did not converge to a minimum (with a warning), and the samples whose kept perturbation
    passed a focal point of the manifold (scored against the nearer local minimum past the
    saddle, not certified to be the nearest point; kept, with a warning). Budgets above the
    manifold's smallest focal distance (:func:`~manifoldtrain.robustness.focal_distance`;
    0.58-0.88 over 200 default-cube points) can reach such perturbations.
    """
    check_dataset("data", data, order=1)
    manifold = _check_manifold(manifold, data)
    budgets = check_levels("budgets", budgets)
    check_int("steps", steps, minimum=0)
    data = _model_like(model, data)
    fn = detached(model)
    g = torch.Generator().manual_seed(seed)
    norms: dict[float, list[torch.Tensor]] = {b: [] for b in budgets}
    failed = {b: 0 for b in budgets}
    focal = {b: 0 for b in budgets}
    m = math.prod(data.targets.shape)
    for b in _batches(data, batch_size):
        n, x, p = len(b), b.inputs.value, b.points
        flat = lambda t: t.reshape(n, -1)  # noqa: E731
        ball = lambda t: t.reshape(n, *([1] * (x.dim() - 1)))  # noqa: E731
        op = ErrorOperator(model, b.inputs, b.targets)
        top = spectral_norm(op, generator=g)
        v = top.vectors[:, 0]
        with torch.no_grad():
            e0 = fn(x) - b.targets.value
        sign = torch.sign((flat(op.apply(v.unsqueeze(1))[:, 0]) * flat(e0)).sum(1))
        v = v * ball(torch.where(sign == 0, 1.0, sign))
        for eps in budgets:
            if eps == 0:
                norms[eps].append(flat(e0).norm(dim=1).detach().cpu())
                continue
            delta = eps * v
            best_delta = delta.clone()
            best = torch.full((n,), -1.0, dtype=torch.float64, device=x.device)
            res = exact_oracle(manifold, p, x + delta, strict=False, start_jet=b.inputs)
            near, ok = res.points, res.converged
            xj, yj = manifold.jets(near, order=1)
            for step in range(steps + 1):
                pred, pull = vjp(fn, x + delta)
                err = (pred - yj.value).detach()
                size = flat(err).double().norm(dim=1)
                better = ok & (size > best)
                best = torch.where(better, size, best)
                best_delta = torch.where(ball(better), delta, best_delta)
                if step == steps:
                    break
                oracle = LinearisedOracle(xj, yj)
                grad = pull(err)[0] - oracle.first_transpose(err.unsqueeze(1))[:, 0]
                delta = l2_ball_step(delta, grad, 0.25 * eps, eps)
                # Follow the nearest point with one Gauss-Newton step from the last one (the
                # perturbation moved a little); every kept perturbation is re-scored exactly below.
                dtheta = LinearisedOracle(xj, yj).coordinates((x + delta - xj.value).unsqueeze(1))[:, 0]
                near, (xj, yj), outside = move_within_domain(manifold, near, dtheta.to(near.dtype))
                ok = ok & ~outside
            final = exact_oracle(manifold, p, x + best_delta, strict=False, start_jet=b.inputs)
            with torch.no_grad():
                size = flat(fn(x + best_delta) - final.target).double().norm(dim=1)
            ok = final.converged & (best >= 0)
            failed[eps] += int((~ok).sum())
            focal[eps] += int((ok & (final.escapes > 0)).sum())
            norms[eps].append(size[ok].detach().cpu())
    out = {}
    for eps in budgets:
        s = torch.cat(norms[eps])
        if failed[eps]:
            warnings.warn(f"adversarial_error: the exact oracle did not converge for {failed[eps]} of {len(data)} samples "
                          f"at budget {eps:g}; they are left out", stacklevel=2)
        if focal[eps]:
            _warn_focal("adversarial_error", focal[eps], len(data), f"budget {eps:g}")
        out[eps] = {
            "rms": math.sqrt(float(s.pow(2).mean()) / m) if len(s) else float("nan"),
            "median": float(s.median()) if len(s) else float("nan"),
            "failed": failed[eps],
            "focal": focal[eps],
        }
    return out


def _warn_focal(where: str, count: int, total: int, at: str) -> None:
    warnings.warn(
        f"{where}: at {at}, {count} of {total} perturbed inputs passed a focal point of the manifold (the stationary "
        "point reached from the clean point was a saddle of the distance, not its minimum); they are scored against "
        "the nearer local minimum found past it, which is not certified to be the nearest point of the manifold",
        stacklevel=3,
    )


@attrs.frozen
class RobustnessMetrics:
    """The robustness figures of a network on test data (target units).

    Attributes
    ----------
    test_rmse : float
        Clean RMSE.
    amplification, invariance_part, sensitivity_part : float
        Medians over samples of :math:`\\lVert E \\rVert_2`, :math:`\\lVert E P_T \\rVert_2`,
        :math:`\\lVert E (I - P_T) \\rVert_2` (target units per unit of input norm).
    noisy_rmse : dict
        Noise level (per input entry) -> RMSE against the exact oracle.
    noisy_rmse_clean : dict
        Noise level -> RMSE against the clean target.
    adversarial_error : dict
        L2 budget -> RMS adversarial error against the exact oracle.
    oracle_failures : int
        Samples left out of a figure because the exact oracle did not converge to a minimum
        (all levels and budgets together; 0 normally).
    n : int
        Samples.
    oracle_focal : int
        Samples of a figure whose perturbation passed a focal point of the manifold, scored
        against the nearer local minimum past the saddle (all levels and budgets together).
    """

    test_rmse: float
    amplification: float
    invariance_part: float
    sensitivity_part: float
    noisy_rmse: dict
    noisy_rmse_clean: dict
    adversarial_error: dict
    oracle_failures: int
    n: int
    oracle_focal: int = 0

    def to_dict(self) -> dict:
        """JSON-able (levels and budgets as string keys)."""
        d = attrs.asdict(self)
        for k in ("noisy_rmse", "noisy_rmse_clean", "adversarial_error"):
            d[k] = {f"{level:g}": v for level, v in d[k].items()}
        return d


def evaluate_robustness(
    model: torch.nn.Module,
    manifold: Manifold,
    data: JetDataset,
    *,
    noise_levels=(0.01, 0.03, 0.1),
    budgets=(0.1, 0.3, 1.0),
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 128,
) -> RobustnessMetrics:
    """Every robustness figure of ``model`` on ``data`` (points and jets of order >= 1 from
    ``manifold``). See the module docstring; ``seed`` fixes the noise and the start vectors."""
    check_dataset("data", data, order=1)
    noise_levels = check_levels("noise_levels", noise_levels)
    budgets = check_levels("budgets", budgets)
    model_data = _model_like(model, data)
    with torch.no_grad():
        sq = sum(float((model(b.inputs.value) - b.targets.value).double().pow(2).sum()) for b in _batches(model_data, batch_size))
    rmse = math.sqrt(sq / model_data.targets.value.numel())
    amp = amplification(model, data, batch_size=batch_size, seed=seed).medians()
    noisy = noisy_rmse(model, manifold, data, noise_levels, seed=seed, batch_size=batch_size)
    adv = adversarial_error(model, manifold, data, budgets, steps=steps, batch_size=batch_size, seed=seed)
    failures = sum(v["failed"] for v in noisy.values()) + sum(v["failed"] for v in adv.values())
    focal = sum(v["focal"] for v in noisy.values()) + sum(v["focal"] for v in adv.values())
    return RobustnessMetrics(
        rmse, amp["amplification"], amp["invariance_part"], amp["sensitivity_part"],
        {k: v["oracle"] for k, v in noisy.items()}, {k: v["clean"] for k, v in noisy.items()},
        {k: v["rms"] for k, v in adv.items()}, failures, len(data), focal,
    )


@attrs.frozen
class Robustness(Metric):
    """Robustness figures as a Trainer metric (on the first ``samples`` test samples).

    With ``manifold`` set, also noisy RMSE and adversarial error against the exact oracle (the
    test data must hold the manifold's points); otherwise only the amplification and its parts
    (``amplification``, ``invariance_part``, ``sensitivity_part``), which need only jets of
    order >= 1.

    Attributes
    ----------
    manifold : Manifold or None
    noise_levels, budgets : tuple of float
    samples : int
        Test samples scored (the first ones): the exact oracle costs renders.
    steps : int
        Gradient-ascent steps of the attack.
    """

    manifold: Manifold | None = None
    noise_levels: tuple = attrs.field(default=(0.03,), converter=lambda v: check_levels("noise_levels", v))
    budgets: tuple = attrs.field(default=(0.3,), converter=lambda v: check_levels("budgets", v))
    samples: int = attrs.field(default=100, validator=attrs_validator(check_int, minimum=1))
    steps: int = attrs.field(default=5, validator=attrs_validator(check_int, minimum=0))

    def check(self, model: torch.nn.Module, data: JetDataset) -> None:
        check_dataset("data", data, order=1)
        if self.manifold is not None:
            _check_manifold(self.manifold, data)

    def __call__(self, model: torch.nn.Module, data: JetDataset) -> dict[str, float | None]:
        data = data.subset(slice(0, self.samples))
        was_training = model.training
        model.eval()
        try:
            out: dict[str, float | None] = dict(amplification(model, data).medians())
            if self.manifold is not None:
                noisy = noisy_rmse(model, self.manifold, data, self.noise_levels)
                adv = adversarial_error(model, self.manifold, data, self.budgets, steps=self.steps)
                out |= {f"noisy_rmse@{k:g}": v["oracle"] for k, v in noisy.items()}
                out |= {f"adversarial@{k:g}": v["rms"] for k, v in adv.items()}
        finally:
            model.train(was_training)
        return out
