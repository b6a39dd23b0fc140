"""Classical baselines: Fienup's HIO/ER phase retrieval, parametric fits, and the Cramer-Rao bound.

For :class:`~manifoldtrain.manifolds.PhaseRetrieval`: :func:`hio_er` recovers the complex
object from the measured far-field magnitudes and the support (the object grid inside the
zero-padded far-field grid); :func:`fit_parameters` fits the manifold's parametric object to a
recovered object, modulo the trivial ambiguities (global phase, translation, twin);
:func:`reconstruct` runs both on measurements in the manifold's input transform, the very
inputs a network sees. :func:`multistart_fit` skips the phase problem: a maximum-likelihood
fit of the parameters straight to the photon counts from several starts drawn from the
manifold's distribution, the strongest baseline here. :func:`fisher_information` and
:func:`cramer_rao_bound` give the floor that no unbiased estimator beats under Poisson noise.
Everything is vectorised over the batch and over random starts, on the device of the inputs.

References: J. R. Fienup, "Phase retrieval algorithms: a comparison", Applied Optics 21 (1982)
2758 (error reduction, hybrid input-output).
"""

from __future__ import annotations

import time

import attrs
import torch
from torch.func import jacfwd, vmap

from manifoldtrain._validation import attrs_validator, check_float, check_int, check_tensor
from manifoldtrain.manifolds.phase_retrieval import PhaseRetrieval

__all__ = [
    "HIOSettings",
    "FitSettings",
    "MultistartSettings",
    "Reconstruction",
    "hio_er",
    "fit_parameters",
    "refine_parameters",
    "reconstruct",
    "multistart_fit",
    "poisson_deviance",
    "fisher_information",
    "cramer_rao_bound",
]


@attrs.frozen
class HIOSettings:
    """Settings of :func:`hio_er`.

    Attributes
    ----------
    iterations : int
        Total iterations per start (default 1000), in cycles of ``hio_per_cycle`` HIO
        iterations then ``er_per_cycle`` ER iterations; the last cycle ends with ER.
    hio_per_cycle, er_per_cycle : int
        Default 80 and 20.
    beta : float
        HIO feedback, in ``(0, 1]`` (default 0.9).
    starts : int
        Random starts per pattern (random Fourier phases); the one with the lowest Fourier
        error is kept (default 4).
    seed : int
        Seeds the random starts.
    """

    iterations: int = attrs.field(default=1000, validator=attrs_validator(check_int, minimum=1))
    hio_per_cycle: int = attrs.field(default=80, validator=attrs_validator(check_int, minimum=0))
    er_per_cycle: int = attrs.field(default=20, validator=attrs_validator(check_int, minimum=1))
    beta: float = attrs.field(default=0.9, validator=attrs_validator(check_float, positive=True, maximum=1.0))
    starts: int = attrs.field(default=4, validator=attrs_validator(check_int, minimum=1))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))


@attrs.frozen
class FitSettings:
    """Settings of :func:`fit_parameters` (Levenberg-Marquardt from several starts).

    Attributes
    ----------
    starts : int
        Starting parameter vectors per object (default 16): half drawn from the manifold's
        distribution, half their twins (a recovered object may be either twin).
    iterations : int
        Levenberg-Marquardt iterations (default 60).
    seed : int
        Seeds the starts.
    """

    starts: int = attrs.field(default=16, validator=attrs_validator(check_int, minimum=1))
    iterations: int = attrs.field(default=60, validator=attrs_validator(check_int, minimum=1))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))


@attrs.frozen
class Reconstruction:
    """What :func:`reconstruct` returns.

    Attributes
    ----------
    objects : Tensor
        ``[n, N, N]`` complex, the objects HIO/ER recovered (on the support).
    fourier_error : Tensor
        ``[n]``, :math:`\\| |F g| - |F_\\text{meas}| \\| / \\| F_\\text{meas} \\|` over measured pixels.
    params : Tensor
        ``[n, d]``, fitted parameters in the manifold's canonical frame (``x_1 > 0``), refined
        against the measurement when ``refine > 0``.
    fit_residual : Tensor
        ``[n]``, relative residual of the fit, :math:`\\| o(\\hat p) - g \\| / \\| g \\|` (after
        the best global phase and translation).
    fitted : Tensor
        ``[n, d]``, the fit's parameters before any refinement.
    seconds_phase, seconds_fit, seconds_refine : float
        Wall-clock seconds of HIO/ER, of the fit and of the refinement, for the whole batch.
    """

    objects: torch.Tensor
    fourier_error: torch.Tensor
    params: torch.Tensor
    fit_residual: torch.Tensor
    fitted: torch.Tensor
    seconds_phase: float
    seconds_fit: float
    seconds_refine: float

    @property
    def seconds(self) -> float:
        """Total wall-clock seconds."""
        return self.seconds_phase + self.seconds_fit + self.seconds_refine


def _check_manifold(manifold: object) -> PhaseRetrieval:
    if not isinstance(manifold, PhaseRetrieval):
        raise TypeError(f"manifold: expected a PhaseRetrieval, got {type(manifold).__name__}")
    return manifold


def _magnitudes(manifold: PhaseRetrieval, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured far-field magnitudes ``[n, M, M]`` and the measured mask ``[M, M]`` (bool),
    both unshifted (DC at index 0), in the DFT's units."""
    counts = manifold.counts_from_input(inputs).clamp_min(0)
    scale = manifold.photons / manifold.reference_intensity()
    mag = torch.fft.ifftshift(torch.sqrt(counts / scale), dim=(-2, -1))
    mask = torch.fft.ifftshift(manifold.measured(inputs.dtype, inputs.device), dim=(-2, -1)) > 0
    return mag, mask


def hio_er(
    manifold: PhaseRetrieval, inputs: torch.Tensor, settings: HIOSettings = HIOSettings()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fienup's hybrid input-output with error-reduction cycles, batched over patterns and starts.

    Each iteration enforces the measured magnitudes in the far field (pixels behind the beam
    stop keep their current value), then the support in object space: the object grid
    (``N x N`` at the corner of the ``M x M`` padded grid, as the manifold's DFT pads it). ER
    sets the object to zero outside the support; HIO sets it to :math:`g - \\beta g'`.

    Parameters
    ----------
    manifold : PhaseRetrieval
    inputs : Tensor
        ``[n, M, M]``, measurements in the manifold's input transform (clean or from
        :meth:`~manifoldtrain.manifolds.PhaseRetrieval.measure`), float32 or float64.
    settings : HIOSettings

    Returns
    -------
    objects : Tensor
        ``[n, N, N]`` complex, the best start's object per pattern.
    fourier_error : Tensor
        ``[n]``, its relative Fourier error.
    """
    manifold = _check_manifold(manifold)
    check_tensor("inputs", inputs, shape=(None, *manifold.input_shape))
    if not isinstance(settings, HIOSettings):
        raise TypeError(f"settings: expected HIOSettings, got {type(settings).__name__}")
    n, N, S = inputs.shape[0], manifold.object_size, settings.starts
    mag, mask = _magnitudes(manifold, inputs)
    mag = mag.repeat_interleave(S, dim=0)  # [n S, M, M]
    support = torch.zeros(manifold.input_shape, dtype=torch.bool, device=inputs.device)
    support[:N, :N] = True
    gen = torch.Generator(device=inputs.device).manual_seed(settings.seed)
    phase = 2 * torch.pi * torch.rand(mag.shape, generator=gen, dtype=mag.dtype, device=mag.device)
    g = torch.fft.ifft2(torch.polar(mag, phase)) * support
    cycle = settings.hio_per_cycle + settings.er_per_cycle
    # Schedule so that the run ends on a full ER block.
    offset = (-settings.iterations) % cycle
    tiny = torch.finfo(mag.dtype).tiny
    for it in range(settings.iterations):
        G = torch.fft.fft2(g)
        amp = G.abs()
        G = torch.where(mask, G * (mag / amp.clamp_min(tiny)), G)
        gp = torch.fft.ifft2(G)
        if (it + offset) % cycle < settings.hio_per_cycle:
            g = torch.where(support, gp, g - settings.beta * gp)
        else:
            g = gp * support
    amp = torch.fft.fft2(g).abs()
    err = (((amp - mag) * mask) ** 2).sum(dim=(-2, -1)).sqrt() / (mag * mask).pow(2).sum(dim=(-2, -1)).sqrt()
    err = err.reshape(n, S)
    best = err.argmin(dim=1)
    objects = g.reshape(n, S, *g.shape[-2:])[torch.arange(n, device=g.device), best, :N, :N]
    return objects, err[torch.arange(n, device=g.device), best]


def _unpack(manifold: PhaseRetrieval, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z = (params with log-amplitudes [d], translation [2], phase [1])`` -> (params, t, phi);
    the amplitudes are fitted through their logarithms, so they stay positive."""
    K, d = manifold.blobs, manifold.param_dim
    params = torch.cat([z[..., : 2 * K - 2], torch.exp(z[..., 2 * K - 2 : 3 * K - 2]), z[..., 3 * K - 2 : d]], dim=-1)
    return params, z[..., d : d + 2], z[..., d + 2]


def _model(manifold: PhaseRetrieval, z: torch.Tensor) -> torch.Tensor:
    """The object of ``z`` (:func:`_unpack`), ``[N, N]`` complex: :math:`e^{i\\phi} o(u - t)`
    for one sample."""
    params, t, phi = _unpack(manifold, z)
    positions, amplitudes, phase = manifold.split(params[None])
    ux, uy = manifold.object_grid(z.dtype, z.device)
    ux, uy = ux - t[0], uy - t[1]
    w2 = torch.tensor(manifold.widths, dtype=z.dtype, device=z.device)[:, None, None] ** 2
    r2 = (ux - positions[0, :, 0, None, None]) ** 2 + (uy - positions[0, :, 1, None, None]) ** 2
    mag = (amplitudes[0, :, None, None] * torch.exp(-r2 / (2 * w2))).sum(dim=0)
    psi = phase[0, 0] * (ux**2 + uy**2) + phase[0, 1] * (ux**2 - uy**2) + phi
    return mag * torch.exp(1j * psi)


def _levenberg_marquardt(residual, z: torch.Tensor, data: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Levenberg-Marquardt: minimise ``|residual(z_b, data_b)|^2`` for every row ``b``.

    ``residual(z [p], data [...]) -> [r]``; Jacobians by ``jacfwd``; a step is kept only if it
    lowers the cost (damping divided by 3), else the damping grows 4x. Returns ``z [B, p]``
    and the costs ``[B]``.
    """
    jac = vmap(jacfwd(residual))
    res = vmap(residual)
    r = res(z, data)
    cost = (r**2).sum(dim=1)
    lam = torch.full_like(cost, 1e-3)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    for _ in range(iterations):
        J = jac(z, data)  # [B, r, p]
        JtJ = J.transpose(1, 2) @ J
        g = (J.transpose(1, 2) @ r[:, :, None])[..., 0]
        diag = torch.diagonal(JtJ, dim1=1, dim2=2).clamp_min(1e-12)
        step = torch.linalg.solve(JtJ + lam[:, None, None] * diag[:, :, None] * eye, -g)
        z_new = z + step
        r_new = res(z_new, data)
        cost_new = (r_new**2).sum(dim=1)
        better = torch.isfinite(cost_new) & (cost_new < cost)
        z = torch.where(better[:, None], z_new, z)
        r = torch.where(better[:, None], r_new, r)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam / 3, lam * 4).clamp(1e-9, 1e9)
    return z, cost


def refine_parameters(
    manifold: PhaseRetrieval, inputs: torch.Tensor, params: torch.Tensor, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine parameters against the measurement itself: least squares in the input transform.

    Levenberg-Marquardt on :math:`\\| x(p) - x_\\text{meas} \\|^2` over the measured
    pixels (amplitudes through their logarithms, so they stay positive), from ``params``
    (e.g. :func:`fit_parameters`' answer); the answer is mapped to the canonical twin
    (``x_1 > 0``). Not part of Fienup's method: the obvious last step of a careful user, run by
    :func:`reconstruct` with ``refine > 0``.

    Parameters
    ----------
    manifold : PhaseRetrieval
    inputs : Tensor
        ``[n, M, M]`` measurements in the manifold's input transform.
    params : Tensor
        ``[n, d]`` starting parameters, in the domain (positive amplitudes).
    iterations : int

    Returns
    -------
    params : Tensor
        ``[n, d]``.
    residual : Tensor
        ``[n]``, :math:`\\| x(p) - x_\\text{meas} \\| / \\| x_\\text{meas} \\|`.
    """
    manifold = _check_manifold(manifold)
    check_tensor("inputs", inputs, shape=(None, *manifold.input_shape))
    check_tensor("params", params, shape=(inputs.shape[0], manifold.param_dim))
    check_int("iterations", iterations, minimum=1)
    K = manifold.blobs
    amp = slice(2 * K - 2, 3 * K - 2)
    if bool((params[:, amp] < 0).any()):
        raise ValueError("params: expected positive amplitudes")
    mask = manifold.measured(inputs.dtype, inputs.device)
    z = params.clone()
    z[:, amp] = z[:, amp].clamp_min(1e-6).log()

    def residual(zz: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = torch.cat([zz[: 2 * K - 2], torch.exp(zz[amp]), zz[3 * K - 2 :]])
        return ((manifold.to_input(manifold._counts(p[None]))[0] - x) * mask).reshape(-1)

    z, cost = _levenberg_marquardt(residual, z, inputs, iterations)
    out = torch.cat([z[:, : 2 * K - 2], torch.exp(z[:, amp]), z[:, 3 * K - 2 :]], dim=1)
    flip = out[:, 0] < 0
    if bool(flip.any()):
        out[flip] = manifold.twin(out[flip])
    norm = ((inputs * mask) ** 2).sum(dim=(-2, -1)).clamp_min(torch.finfo(inputs.dtype).tiny)
    return out, (cost / norm).sqrt()


def fit_parameters(
    manifold: PhaseRetrieval, objects: torch.Tensor, settings: FitSettings = FitSettings()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares fit of the manifold's object to recovered objects, modulo the ambiguities.

    Fits :math:`e^{i\\phi} o_p(u - t)` to each object over ``p`` (the parameters), a
    translation ``t`` and a global phase :math:`\\phi` by Levenberg-Marquardt (Jacobians by
    ``torch.func.jacfwd``), from ``settings.starts`` starts per object (translation started at
    the object's centroid, the phase at its best value; amplitudes fitted through their
    logarithms, so they stay positive), and keeps the best start. A fit
    that lands on the twin (``x_1 < 0``) is mapped to its twin
    (:meth:`~manifoldtrain.manifolds.PhaseRetrieval.twin`), the canonical answer.

    Parameters
    ----------
    manifold : PhaseRetrieval
    objects : Tensor
        ``[n, N, N]`` complex.
    settings : FitSettings

    Returns
    -------
    params : Tensor
        ``[n, d]`` real, of the objects' real dtype.
    residual : Tensor
        ``[n]``, :math:`\\| e^{i\\phi} o_p(u - t) - g \\| / \\| g \\|`.
    """
    manifold = _check_manifold(manifold)
    if not isinstance(objects, torch.Tensor) or not objects.is_complex():
        raise TypeError(f"objects: expected a complex tensor, got {getattr(objects, 'dtype', type(objects).__name__)}")
    N = manifold.object_size
    if objects.ndim != 3 or tuple(objects.shape[1:]) != (N, N):
        raise ValueError(f"objects: expected shape [n, {N}, {N}], got {list(objects.shape)}")
    if not isinstance(settings, FitSettings):
        raise TypeError(f"settings: expected FitSettings, got {type(settings).__name__}")
    real = objects.real.dtype
    n, S, d = objects.shape[0], settings.starts, manifold.param_dim
    gen = torch.Generator().manual_seed(settings.seed)
    starts = manifold.sample(n * S, gen, dtype=real).to(objects.device).reshape(n, S, d)
    starts[:, 1::2] = manifold.twin(starts[:, 1::2].reshape(-1, d)).reshape(n, -1, d)
    # Translation: the intensity-weighted centroid of |g|^2; phase: closed form below.
    ux, uy = manifold.object_grid(real, objects.device)
    w = objects.abs() ** 2
    w = w / w.sum(dim=(-2, -1), keepdim=True)
    t0 = torch.stack([(w * ux).sum(dim=(-2, -1)), (w * uy).sum(dim=(-2, -1))], dim=-1)  # [n, 2]
    K = manifold.blobs
    starts[..., 2 * K - 2 : 3 * K - 2] = starts[..., 2 * K - 2 : 3 * K - 2].log()
    z = torch.cat([starts, t0[:, None].expand(n, S, 2), starts.new_zeros(n, S, 1)], dim=-1).reshape(n * S, d + 3)
    target = objects.repeat_interleave(S, dim=0)  # [n S, N, N]

    model = lambda zz: _model(manifold, zz)  # noqa: E731
    batched = vmap(model)
    o = batched(z)
    z[:, -1] = torch.angle((o.conj() * target).sum(dim=(-2, -1)))  # best global phase

    def residual(zz: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # g: [N, N, 2] real
        return (torch.view_as_real(model(zz)) - g).reshape(-1)

    z, cost = _levenberg_marquardt(residual, z, torch.view_as_real(target).contiguous(), settings.iterations)
    cost = cost.reshape(n, S)
    best = cost.argmin(dim=1)
    rows = torch.arange(n, device=objects.device)
    params = _unpack(manifold, z.reshape(n, S, d + 3)[rows, best])[0].clone()
    flip = params[:, 0] < 0
    if bool(flip.any()):
        params[flip] = manifold.twin(params[flip])
    norm = (objects.abs() ** 2).sum(dim=(-2, -1)).clamp_min(torch.finfo(real).tiny)
    return params, (cost[rows, best] / norm).sqrt()


def reconstruct(
    manifold: PhaseRetrieval,
    inputs: torch.Tensor,
    hio: HIOSettings = HIOSettings(),
    fit: FitSettings = FitSettings(),
    refine: int = 0,
) -> Reconstruction:
    """HIO/ER then the parametric fit (then, with ``refine > 0``, that many iterations of
    :func:`refine_parameters`): the classical pipeline, from the network's own inputs.

    Parameters
    ----------
    manifold : PhaseRetrieval
    inputs : Tensor
        ``[n, M, M]`` measurements in the manifold's input transform.
    hio : HIOSettings
    fit : FitSettings
    refine : int
        Levenberg-Marquardt iterations against the measurement after the fit (default 0: none).

    Returns
    -------
    Reconstruction

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.manifolds import PhaseRetrieval
    >>> pr = PhaseRetrieval()
    >>> p = pr.sample(2, torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> x = pr.input(p, torch.zeros_like(p))
    >>> rec = reconstruct(pr, x, HIOSettings(iterations=50, starts=1), FitSettings(starts=2, iterations=5))
    >>> rec.params.shape, rec.fourier_error.shape
    (torch.Size([2, 6]), torch.Size([2]))
    """
    check_int("refine", refine, minimum=0)
    t0 = time.perf_counter()
    objects, err = hio_er(manifold, inputs, hio)
    t1 = time.perf_counter()
    fitted, residual = fit_parameters(manifold, objects, fit)
    t2 = time.perf_counter()
    params = refine_parameters(manifold, inputs, fitted, refine)[0] if refine else fitted
    t3 = time.perf_counter()
    return Reconstruction(objects, err, params, residual, fitted, t1 - t0, t2 - t1, t3 - t2)


# ---------------------------------------------------------------------------- direct fit to the counts


def _check_dtype_setting(instance, attribute, value):
    if value is not None and value not in ("float32", "float64"):
        raise ValueError(f"{attribute.name}: expected None, 'float32' or 'float64', got {value!r}")


@attrs.frozen
class MultistartSettings:
    """Settings of :func:`multistart_fit`.

    Attributes
    ----------
    starts : int
        Starting parameter vectors per pattern, drawn from the manifold's distribution
        (:meth:`~manifoldtrain.manifolds.PhaseRetrieval.sample`; default 8).
    iterations : int
        Levenberg-Marquardt iterations, run on every start (default 30; 15 left one of 160
        noisy draws of one test point with every start unconverged).
    seed : int
        Seeds the starts (a ``generator`` passed to :func:`multistart_fit` replaces it).
    dtype : str or None
        ``"float32"`` or ``"float64"``: the dtype of the fit; ``None`` (default) follows the
        counts.
    """

    starts: int = attrs.field(default=8, validator=attrs_validator(check_int, minimum=1))
    iterations: int = attrs.field(default=30, validator=attrs_validator(check_int, minimum=1))
    seed: int = attrs.field(default=0, validator=attrs_validator(check_int, minimum=0))
    dtype: str | None = attrs.field(default=None, validator=_check_dtype_setting)


def _deviance_residual(mu: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Signed Poisson deviance residuals, elementwise: ``r`` with ``r^2 = 2 (k log(k/mu) - k + mu)``
    and the sign of ``k - mu``, smooth in ``mu > 0`` (``k >= 0``).

    Written as :math:`r = (k - \\mu) \\sqrt{2 q(t) / k}` with :math:`t = \\mu / k` and
    :math:`q(t) = (t - 1 - \\log t) / (t - 1)^2` (a series near ``t = 1``), and
    :math:`r = -\\sqrt{2 \\mu}` where ``k = 0``: no square root of zero, so forward-mode
    derivatives stay finite.
    """
    zero = k <= 0
    ks = torch.where(zero, torch.ones_like(k), k)
    t = mu / ks
    e = t - 1
    near = e.abs() < 1e-2
    es = torch.where(near, torch.ones_like(e), e)  # a safe e for the closed form
    q_far = (es - torch.log1p(es)) / es**2
    q_near = 0.5 - e / 3 + e**2 / 4 - e**3 / 5 + e**4 / 6
    q = torch.where(near, q_near, q_far)
    r = (ks - mu) * torch.sqrt(2 * q / ks)
    return torch.where(zero, -torch.sqrt(2 * mu), r)


def poisson_deviance(manifold: PhaseRetrieval, counts: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Poisson deviance of parameters against measured counts, summed over the measured pixels.

    :math:`D(p) = 2 \\sum_\\text{pixels} [k \\log(k / \\mu(p)) - k + \\mu(p)]`, the negative
    log-likelihood up to a constant (times 2); :func:`multistart_fit` minimises it.

    Parameters
    ----------
    manifold : PhaseRetrieval
    counts : Tensor
        ``[n, M, M]`` photon counts ``k >= 0`` (Poisson draws, or expected counts).
    params : Tensor
        ``[n, d]``, any finite parameters.

    Returns
    -------
    Tensor
        ``[n]``.
    """
    manifold = _check_manifold(manifold)
    counts = _check_counts(manifold, counts)
    check_tensor("params", params, shape=(counts.shape[0], manifold.param_dim))
    params = params.to(dtype=counts.dtype, device=counts.device)
    mask = manifold.measured(counts.dtype, counts.device) > 0
    mu = torch.where(mask, manifold.counts(params), torch.ones_like(counts))
    r = _deviance_residual(mu.clamp_min(torch.finfo(counts.dtype).tiny), counts) * mask
    return (r**2).sum(dim=(-2, -1))


def _check_counts(manifold: PhaseRetrieval, counts: object) -> torch.Tensor:
    check_tensor("counts", counts, shape=(None, *manifold.input_shape))
    if bool((counts < 0).any()):
        raise ValueError(f"counts: expected photon counts >= 0, found {int((counts < 0).sum())} negative entries "
                         "(inputs in the manifold's transform? convert them with manifold.counts_from_input)")
    return counts


def multistart_fit(
    manifold: PhaseRetrieval,
    counts: torch.Tensor,
    settings: MultistartSettings = MultistartSettings(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood fit of the parameters straight to the photon counts, from several starts.

    No phase retrieval: the forward model (:meth:`~manifoldtrain.manifolds.PhaseRetrieval.counts`)
    is fitted to the measured counts by batched Levenberg-Marquardt (Jacobians by
    ``torch.func.jacfwd``) on the signed Poisson deviance residuals, from ``settings.starts``
    parameter vectors per pattern drawn from the manifold's distribution, all patterns x starts
    in one batch. Per pattern the start with the lowest **Poisson deviance**
    (:func:`poisson_deviance`, the cost minimised) wins. Amplitudes are fitted through their
    logarithms, so they stay positive; an answer that lands on the twin (``x_1 < 0``, the same
    counts) is mapped to its twin, the canonical answer. Pixels behind the beam stop are
    ignored.

    Parameters
    ----------
    manifold : PhaseRetrieval
    counts : Tensor
        ``[n, M, M]`` photon counts (e.g. Poisson draws of
        :meth:`~manifoldtrain.manifolds.PhaseRetrieval.counts`, or
        ``manifold.counts_from_input(inputs)`` for inputs in the manifold's transform), float32
        or float64. The fit runs on their device, in their dtype unless ``settings.dtype``.
    settings : MultistartSettings
    generator : torch.Generator, optional
        Draws the starts (on its device; then moved to the counts'); default: a CPU generator
        seeded with ``settings.seed``.

    Returns
    -------
    params : Tensor
        ``[n, d]``, in the fit's dtype, on the counts' device.
    deviance : Tensor
        ``[n]``, the winning start's Poisson deviance.

    Raises
    ------
    TypeError, ValueError
        A bad argument, naming it (``manifold``, ``counts``, ``settings``, ``generator``).

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.manifolds import PhaseRetrieval
    >>> pr = PhaseRetrieval()
    >>> p = pr.sample(2, torch.Generator().manual_seed(3), dtype=torch.float64)
    >>> k = torch.poisson(pr.counts(p), generator=torch.Generator().manual_seed(0))
    >>> est, dev = multistart_fit(pr, k, MultistartSettings(starts=4, iterations=30))
    >>> est.shape, dev.shape
    (torch.Size([2, 6]), torch.Size([2]))
    """
    manifold = _check_manifold(manifold)
    counts = _check_counts(manifold, counts)
    if not isinstance(settings, MultistartSettings):
        raise TypeError(f"settings: expected MultistartSettings, got {type(settings).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    dtype = counts.dtype if settings.dtype is None else getattr(torch, settings.dtype)
    device = counts.device
    counts = counts.to(dtype)
    n, S, d, K = counts.shape[0], settings.starts, manifold.param_dim, manifold.blobs
    amp = slice(2 * K - 2, 3 * K - 2)
    gen = generator if generator is not None else torch.Generator().manual_seed(settings.seed)
    z = manifold.sample(n * S, gen, dtype=dtype).to(device)
    z[:, amp] = z[:, amp].log()
    mask = manifold.measured(dtype, device) > 0
    tiny = torch.finfo(dtype).tiny

    def params_of(zz: torch.Tensor) -> torch.Tensor:
        return torch.cat([zz[..., : 2 * K - 2], torch.exp(zz[..., amp]), zz[..., 3 * K - 2 :]], dim=-1)

    def residual(zz: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        mu = manifold._counts(params_of(zz)[None])[0]
        mu = torch.where(mask, mu, torch.ones_like(mu)).clamp_min(tiny)
        return (_deviance_residual(mu, k) * mask).reshape(-1)

    data = counts.repeat_interleave(S, dim=0)  # [n S, M, M]
    z, cost = _levenberg_marquardt(residual, z, data, settings.iterations)
    cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf"))).reshape(n, S)
    best = cost.argmin(dim=1)
    rows = torch.arange(n, device=device)
    params = params_of(z.reshape(n, S, d)[rows, best]).clone()
    flip = params[:, 0] < 0
    if bool(flip.any()):
        params[flip] = manifold.twin(params[flip])
    return params, cost[rows, best]


# ---------------------------------------------------------------------------- the Cramer-Rao bound


def _with_photons(manifold: PhaseRetrieval, photons: float | None) -> PhaseRetrieval:
    if photons is None:
        return manifold
    check_float("photons", photons, positive=True)
    return attrs.evolve(manifold, photons=float(photons))


def fisher_information(manifold: PhaseRetrieval, points: torch.Tensor, photons: float | None = None) -> torch.Tensor:
    """Fisher information of the parameters in Poisson counts, from the manifold's exact jets.

    With independent Poisson counts of means :math:`\\mu(p)` over the measured pixels,

    .. math::
        I_{ij}(p) = \\sum_\\text{pixels} \\frac{\\partial_i \\mu \\, \\partial_j \\mu}{\\mu}.

    :math:`\\partial_i \\mu` comes from the first-order input jet
    (:meth:`~manifoldtrain.manifolds.PhaseRetrieval.jets`, closed form) through the inverse of
    the transform: :math:`\\partial_i \\mu = x_i (\\text{count\\_scale} + \\mu)` for ``"log"``,
    :math:`x_i \\, \\text{photons} / M^2` for ``"linear"``. Pixels with :math:`\\mu = 0` (the
    beam stop) carry no information and are left out.

    Parameters
    ----------
    manifold : PhaseRetrieval
    points : Tensor
        ``[n, d]``, points of the domain (float64 advised: the sum spans many decades).
    photons : float, optional
        The expected photon count of the reference object; default the manifold's. The
        information is proportional to it.

    Returns
    -------
    Tensor
        ``[n, d, d]``, in the points' dtype and device.
    """
    manifold = _with_photons(_check_manifold(manifold), photons)
    manifold.check_points(points)
    x = manifold.jets(points, order=1)[0]
    mu = manifold.counts_from_input(x.value)  # [n, M, M]
    if manifold.transform == "log":
        dmu = x.d1 * (manifold.count_scale + mu)[:, None]
    else:
        dmu = x.d1 * (manifold.photons / manifold.grid_size**2)
    keep = mu > 0
    w = torch.where(keep, 1.0 / torch.where(keep, mu, torch.ones_like(mu)), torch.zeros_like(mu))
    g = dmu.flatten(2)  # [n, d, P]
    return torch.einsum("nip,njp->nij", g * w.flatten(1)[:, None], g)


def cramer_rao_bound(manifold: PhaseRetrieval, points: torch.Tensor, photons: float | None = None) -> torch.Tensor:
    """Cramer-Rao floor on each parameter's standard deviation under Poisson noise.

    ``sqrt(diag(I^{-1}))`` with ``I`` the :func:`fisher_information`: no unbiased estimator of
    the parameters from one measurement has a smaller standard deviation (an estimator is
    efficient when it attains it; the maximum-likelihood fit :func:`multistart_fit` does so
    asymptotically in the photon count). To turn it into the benchmark's relative error, divide
    each parameter's floor by its spread (``benchmarks/phase_retrieval.py``).

    Parameters
    ----------
    manifold : PhaseRetrieval
    points : Tensor
        ``[n, d]``, points of the domain.
    photons : float, optional
        As in :func:`fisher_information` (the floor scales as ``photons ** -0.5``).

    Returns
    -------
    Tensor
        ``[n, d]``, in the points' dtype and device.

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.manifolds import PhaseRetrieval
    >>> pr = PhaseRetrieval()
    >>> p = pr.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> std = cramer_rao_bound(pr, p)
    >>> std.shape, bool(torch.allclose(cramer_rao_bound(pr, p, photons=4e6), std / 2))
    (torch.Size([3, 6]), True)
    """
    info = fisher_information(manifold, points, photons)
    cov = torch.linalg.inv(info)
    return torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()
