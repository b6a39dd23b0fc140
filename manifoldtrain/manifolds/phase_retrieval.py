"""Phase retrieval: the far-field intensity of a smooth complex object, and the object's parameters.

The second bundled manifold, written through the public :class:`~manifoldtrain.Manifold`
interface only (its jets are the ``torch.func`` default). See ``docs/own_manifold.rst`` for a
walk-through of how it was written.
"""

from __future__ import annotations

import math
import warnings

import attrs
import torch

from manifoldtrain._validation import attrs_validator, check_float, check_int, check_tensor
from manifoldtrain.jet import Jet, triu_pairs
from manifoldtrain.manifold import Manifold

__all__ = ["PhaseRetrieval"]


def _check_widths(instance, attribute, value):
    if len(value) < 2:
        raise ValueError(f"{attribute.name}: expected at least 2 blob widths, got {value!r}")
    for w in value:
        check_float(attribute.name, w, positive=True)
    if len(set(value)) != len(value):
        raise ValueError(
            f"{attribute.name}: expected distinct widths (they tell the blobs apart; equal widths make the "
            f"blobs' order ambiguous, a permutation symmetry the target cannot resolve), got {value!r}"
        )


def _check_range(instance, attribute, value):
    if len(value) != 2:
        raise ValueError(f"{attribute.name}: expected (low, high), got {value!r}")
    low, high = value
    check_float(attribute.name, low, positive=True)
    check_float(attribute.name, high, positive=True)
    if not low <= high:
        raise ValueError(f"{attribute.name}: expected low <= high, got {value!r}")


def _floats(value):
    try:
        return tuple(float(v) for v in value)
    except TypeError:
        raise TypeError(f"expected a sequence of numbers, got {value!r}") from None


def _check_choice(*choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name}: expected one of {list(choices)}, got {value!r}")

    return check


@attrs.frozen(eq=True)
class PhaseRetrieval(Manifold):
    """Coherent diffraction: a complex object of Gaussian blobs and its far-field intensity.

    The object lives on an ``object_size`` x ``object_size`` grid spanning ``[-1, 1]^2``
    (pixel centres :math:`u_j = -1 + (j + 1/2)\\, 2/N`). It is a sum of :math:`K` Gaussian
    blobs of fixed, distinct widths :math:`w_k` (``widths``), free positions :math:`p_k` and
    amplitudes :math:`a_k > 0`, under a smooth quadratic phase:

    .. math::
        o(u) = e^{i\\psi(u)} \\sum_{k=1}^{K} a_k
               \\exp\\Big(-\\frac{|u - p_k|^2}{2 w_k^2}\\Big), \\qquad
        \\psi(u) = c_1 (u_x^2 + u_y^2) + c_2 (u_x^2 - u_y^2).

    The measurement is the far-field intensity on a ``grid_size`` x ``grid_size`` grid
    (``grid_size >= 2 object_size``, oversampled so that the intensity determines the object up
    to the ambiguities below), in expected photon counts, DC at the centre
    (``fftshift``):

    .. math::
        \\lambda = \\text{photons} \\cdot \\frac{|\\mathrm{DFT}_M(o)|^2}{I_\\text{ref}},

    with the object zero-padded to :math:`M \\times M` and :math:`I_\\text{ref}` the total
    intensity of the reference object (every blob centred, amplitude 1, blobs counted
    separately), so an object of unit amplitudes and non-overlapping blobs scatters about
    ``photons`` photons. Pixels within ``beam_stop`` pixels of the centre are not measured
    (zero). The input is ``log1p(lambda / count_scale)`` (``transform="log"``, default: the dynamic range of
    a diffraction pattern spans many decades) or ``lambda / photons * grid_size**2``
    (``"linear"``), ``[grid_size, grid_size]``. :meth:`measure` draws a Poisson-noisy
    measurement of the same points, in the same transform.

    **Ambiguities, and how the target avoids them.** The intensity cannot tell apart an
    object from (1) the same object times a global phase :math:`e^{i\\phi}`, (2) the object
    translated, (3) its twin, the conjugate inversion :math:`\\overline{o(-u)}` (every
    :math:`p_k \\to -p_k`, :math:`c \\to -c`), and here also (4) the blobs relabelled. A network
    trained on a target that differs between such objects learns the average of the twins.
    The parametrisation removes each in turn: (1) :math:`\\psi` has no constant term (the phase
    is 0 at the origin); (2) the blobs' centroid is fixed at the origin, the last position is
    :math:`p_K = -\\sum_{k<K} p_k`; (4) the widths are distinct, so blob ``k`` is the one of
    width ``widths[k]``; (3) the domain keeps only one twin of each pair: blob 1 lies right of
    the centroid, :math:`x_1 > 0` (sampled in ``[twin_margin, position_range]``, away from the
    boundary where the twins meet). On that domain the target (the parameters, or the object
    itself with ``target_kind="object"``) is a function of the measurement.

    A point is the parameter vector ``[d]``, :math:`d = 3K`:
    ``(x_1, y_1, ..., x_{K-1}, y_{K-1}, a_1, ..., a_K, c_1, c_2)``; the chart is a translation,
    ``x(p, theta) = x(p + theta, 0)`` (so the default :meth:`move` applies). The target is
    the parameter vector ``[d]`` (``target_kind="parameters"``) or the object ``[2, N, N]`` (real
    and imaginary parts, ``target_kind="object"``). Jets come from the ``torch.func`` default.

    Parameters
    ----------
    object_size : int
        ``N``, pixels per side of the object grid, which is also the support (default 16).
    grid_size : int
        ``M``, pixels per side of the far field, at least ``2 N`` (default 32).
    widths : tuple of float
        The blobs' standard deviations in object units (the grid spans 2), distinct
        (default ``(0.12, 0.24)``: two blobs, ``d = 6``; three or more make a harder problem
        that a 3x256 MLP does not learn from 1000 samples in minutes).
    position_range : float
        Sampling: ``x_k, y_k`` uniform in ``[-position_range, position_range]`` for
        ``k < K``, except ``x_1`` in ``[twin_margin, position_range]`` (default 0.3).
    twin_margin : float
        Sampling: the smallest ``x_1`` drawn (default 0.1); points with ``x_1 <= 0`` are
        outside the domain. Near ``x_1 = 0`` an object and the mirror image of its twin
        differ little in measurement but much in target: the margin keeps the data away.
    amplitude_range : (float, float)
        Sampling: amplitudes uniform in this range (default ``(0.5, 1.5)``).
    phase_range : float
        Sampling: ``c_1, c_2`` uniform in ``[-phase_range, phase_range]``, radians per
        squared object unit (default 1.0).
    photons : float
        Expected photon count of the reference object (default ``1e6``): at least 1 (fewer
        leave the noisy patterns all zero), and under 100 a ``UserWarning`` (nearly every pixel
        counts zero). Widths under a quarter of an object pixel warn too (the blobs fall
        between pixel centres).
    beam_stop : float
        Radius in far-field pixels of the unmeasured disc around the centre (default 0: none).
    transform : str
        ``"log"`` (default) or ``"linear"``, as above.
    count_scale : float
        With ``transform="log"``, the input is ``log1p(lambda / count_scale)``: linear in the
        counts below about ``count_scale`` photons, logarithmic above (default 100). A small
        scale amplifies the darkest pixels, where Poisson noise dominates and the second
        derivatives spike near the intensity's zeros; 30 to 300 trains better than 1.
    target_kind : str
        ``"parameters"`` (default) or ``"object"``: what the target is.

    Raises
    ------
    TypeError, ValueError
        A setting of the wrong type or range, naming it (e.g. ``grid_size < 2 object_size``,
        a negative photon count, equal widths).

    Examples
    --------
    >>> import torch
    >>> pr = PhaseRetrieval()
    >>> points = pr.sample(2, torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> x, y = pr.jets(points)
    >>> x.value.shape, x.d1.shape, x.d2.shape, y.value.shape
    (torch.Size([2, 32, 32]), torch.Size([2, 6, 32, 32]), torch.Size([2, 21, 32, 32]), torch.Size([2, 6]))
    >>> bool(torch.allclose(pr.counts(pr.twin(points)), pr.counts(points)))  # the twin: same intensity
    True
    """

    object_size: int = attrs.field(default=16, validator=attrs_validator(check_int, minimum=2, maximum=1024))
    grid_size: int = attrs.field(default=32, validator=attrs_validator(check_int, minimum=4, maximum=4096))
    widths: tuple[float, ...] = attrs.field(default=(0.12, 0.24), converter=_floats, validator=_check_widths,
                                         metadata={"nargs": "+"})
    position_range: float = attrs.field(default=0.3, validator=attrs_validator(check_float, positive=True))
    twin_margin: float = attrs.field(default=0.1, validator=attrs_validator(check_float, positive=True))
    amplitude_range: tuple[float, float] = attrs.field(default=(0.5, 1.5), converter=_floats, validator=_check_range)
    phase_range: float = attrs.field(default=1.0, validator=attrs_validator(check_float, nonnegative=True))
    photons: float = attrs.field(default=1e6, validator=attrs_validator(check_float, positive=True))
    beam_stop: float = attrs.field(default=0.0, validator=attrs_validator(check_float, nonnegative=True))
    transform: str = attrs.field(default="log", validator=_check_choice("log", "linear"))
    count_scale: float = attrs.field(default=100.0, validator=attrs_validator(check_float, positive=True))
    target_kind: str = attrs.field(default="parameters", validator=_check_choice("parameters", "object"))

    def __attrs_post_init__(self) -> None:
        if self.photons < 1:
            raise ValueError(f"photons: expected at least 1 (the expected count of a whole pattern), got "
                             f"{self.photons:g}: almost every noisy pattern would count no photon at all, inputs "
                             "all zero")
        if self.photons < 100:
            warnings.warn(f"photons: {self.photons:g} photons per pattern over {self.grid_size**2} pixels: nearly "
                          "every pixel of a noisy pattern counts zero, and the inputs say little about the object",
                          UserWarning, stacklevel=3)
        pixel = 2.0 / self.object_size
        if min(self.widths) < 0.25 * pixel:
            warnings.warn(f"widths: {min(self.widths):g} is under a quarter of an object pixel ({pixel:g}): the blob "
                          "falls between pixel centres, so the object is nearly blank and its derivatives vanish; "
                          f"take widths of a pixel ({pixel:g}) or more", UserWarning, stacklevel=3)
        if self.grid_size < 2 * self.object_size:
            raise ValueError(
                f"grid_size: expected at least twice object_size = {2 * self.object_size} (the far field must "
                f"oversample the object by 2 or more for the intensity to determine it), got {self.grid_size}"
            )
        if self.twin_margin >= self.position_range:
            raise ValueError(
                f"twin_margin: expected less than position_range = {self.position_range} (blob 1's x is drawn "
                f"in [twin_margin, position_range]), got {self.twin_margin}"
            )
        if 2 * self.beam_stop >= self.grid_size:
            raise ValueError(f"beam_stop: expected a radius under half the grid, {self.grid_size / 2}, got {self.beam_stop}")

    # ------------------------------------------------------------------ shapes and names

    @property
    def blobs(self) -> int:
        """``K``, the number of blobs."""
        return len(self.widths)

    @property
    def param_dim(self) -> int:
        return 3 * self.blobs

    @property
    def point_shape(self) -> tuple[int]:
        return (self.param_dim,)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.grid_size, self.grid_size)

    @property
    def target_shape(self) -> tuple[int, ...]:
        if self.target_kind == "object":
            return (2, self.object_size, self.object_size)
        return (self.param_dim,)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The parameters' names (:attr:`coordinate_names`), or ``re[r,c]``, ``im[r,c]`` of the
        object's pixels with ``target_kind="object"``."""
        if self.target_kind == "object":
            n = self.object_size
            return tuple(f"{part}[{r},{c}]" for part in ("re", "im") for r in range(n) for c in range(n))
        return self.coordinate_names

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        names = []
        for k in range(1, self.blobs):
            names += [f"x{k}", f"y{k}"]
        return (*names, *(f"a{k}" for k in range(1, self.blobs + 1)), "c1", "c2")

    def object_grid(self, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel centres ``(u_x, u_y)`` of the object grid, each ``[N, N]`` (``u_x`` along columns)."""
        u = -1.0 + (torch.arange(self.object_size, dtype=torch.float64) + 0.5) * (2.0 / self.object_size)
        ux = u.expand(self.object_size, -1)
        return ux.to(dtype=dtype, device=device), ux.T.contiguous().to(dtype=dtype, device=device)

    def measured(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """``[M, M]``: 1 where the detector measures, 0 behind the beam stop (centred grid)."""
        idx = torch.arange(self.grid_size, dtype=torch.float64) - self.grid_size // 2
        r = torch.sqrt(idx[:, None] ** 2 + idx[None, :] ** 2)
        return (r >= self.beam_stop).to(dtype=dtype, device=device) if self.beam_stop > 0 else torch.ones(
            self.grid_size, self.grid_size, dtype=dtype, device=device)

    def reference_intensity(self) -> float:
        """:math:`I_\\text{ref}`: total far-field intensity of every blob centred with amplitude 1, counted separately."""
        ux, uy = self.object_grid()
        r2 = ux**2 + uy**2
        # Parseval: sum |DFT_M(o)|^2 = M^2 sum |o|^2.
        return float(sum(torch.exp(-r2 / w**2).sum() for w in self.widths) * self.grid_size**2)

    # ------------------------------------------------------------------ parameters

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[n, d]`` parameters -> positions ``[n, K, 2]`` (the last from the centroid), amplitudes
        ``[n, K]``, phase coefficients ``[n, 2]``."""
        K = self.blobs
        free = params[:, : 2 * (K - 1)].reshape(params.shape[0], K - 1, 2)
        positions = torch.cat([free, -free.sum(dim=1, keepdim=True)], dim=1)
        return positions, params[:, 2 * (K - 1) : 3 * K - 2], params[:, 3 * K - 2 :]

    def twin(self, points: torch.Tensor) -> torch.Tensor:
        """The twin's parameters ``[n, d]``: positions and phase coefficients negated, amplitudes kept.

        The twin object is the conjugate inversion :math:`\\overline{o(-u)}`, with the same
        intensity (:meth:`counts`) and, for points of the domain, outside it (``x_1 < 0``).
        """
        check_tensor("points", points, shape=(None, *self.point_shape))
        K = self.blobs
        sign = torch.ones(self.param_dim, dtype=points.dtype, device=points.device)
        sign[: 2 * (K - 1)] = -1.0
        sign[3 * K - 2 :] = -1.0
        return points * sign

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` parameter vectors ``[n, d]`` uniformly from the ranges above.

        Drawn in float64 on the generator's device, then cast.
        """
        dtype, gdev = self.check_sample_arguments(n, generator, dtype)
        K, r = self.blobs, self.position_range

        def uniform(shape, low, high):
            return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64, device=gdev)

        positions = uniform((n, 2 * (K - 1)), -r, r)
        positions[:, 0] = uniform((n,), self.twin_margin, r)
        amplitudes = uniform((n, K), *self.amplitude_range)
        phase = uniform((n, 2), -self.phase_range, self.phase_range)
        points = torch.cat([positions, amplitudes, phase], dim=1)
        return points.to(dtype=dtype, device=device if device is not None else gdev)

    def check_domain(self, points: torch.Tensor) -> None:
        """Amplitudes must be positive and blob 1 right of the centroid, ``x_1 > 0`` (one twin only)."""
        K = self.blobs
        bad_a = (points[:, 2 * (K - 1) : 3 * K - 2] <= 0).any(dim=1)
        bad_x = points[:, 0] <= 0
        for bad, what in ((bad_a, "positive amplitudes a_k (columns "
                           f"{2 * (K - 1)}..{3 * K - 3})"), (bad_x, "x_1 > 0 (column 0: blob 1 right of the centroid; "
                                                                 "x_1 < 0 is the twin of a point with x_1 > 0)")):
            if bool(bad.any()):
                rows = torch.nonzero(bad).flatten()[:5].tolist()
                raise ValueError(f"points: expected {what}; rows {rows} are not")

    # ------------------------------------------------------------------ the forward model

    def object(self, params: torch.Tensor) -> torch.Tensor:
        """The complex object ``[n, N, N]`` of parameters ``[n, d]`` (any finite parameters, in the
        domain or not: the twin's too). Complex64 for float32 parameters, complex128 for float64."""
        check_tensor("params", params, shape=(None, *self.point_shape))
        return self._object(params)

    def _object(self, params: torch.Tensor) -> torch.Tensor:
        positions, amplitudes, phase = self.split(params)
        ux, uy = self.object_grid(params.dtype, params.device)
        dx = ux - positions[:, :, 0, None, None]  # [n, K, N, N]
        dy = uy - positions[:, :, 1, None, None]
        w = torch.tensor(self.widths, dtype=params.dtype, device=params.device)[:, None, None]
        magnitude = (amplitudes[:, :, None, None] * torch.exp(-(dx**2 + dy**2) / (2 * w**2))).sum(dim=1)
        psi = phase[:, 0, None, None] * (ux**2 + uy**2) + phase[:, 1, None, None] * (ux**2 - uy**2)
        return magnitude * torch.exp(1j * psi)

    def _counts(self, params: torch.Tensor) -> torch.Tensor:
        far = torch.fft.fft2(self._object(params), s=(self.grid_size, self.grid_size))
        intensity = torch.fft.fftshift(far.real**2 + far.imag**2, dim=(-2, -1))
        scale = self.photons / self.reference_intensity()
        counts = scale * intensity
        if self.beam_stop > 0:
            counts = counts * self.measured(params.dtype, params.device)
        return counts

    def counts(self, params: torch.Tensor) -> torch.Tensor:
        """Expected photon counts ``[n, M, M]`` of parameters ``[n, d]`` (centred, zero behind the
        beam stop); any finite parameters, in the domain or not."""
        check_tensor("params", params, shape=(None, *self.point_shape))
        return self._counts(params)

    def to_input(self, counts: torch.Tensor) -> torch.Tensor:
        """Photon counts ``[n, M, M]`` -> the network's input (the ``transform``)."""
        if self.transform == "log":
            return torch.log1p(counts / self.count_scale)
        return counts * (self.grid_size**2 / self.photons)

    def counts_from_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_input`: inputs ``[n, M, M]`` -> photon counts."""
        check_tensor("inputs", inputs, shape=(None, *self.input_shape))
        if self.transform == "log":
            return torch.expm1(inputs) * self.count_scale
        return inputs * (self.photons / self.grid_size**2)

    def input(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The measurement ``[n, M, M]``: :meth:`to_input` of the expected counts."""
        self.check_points(points)
        self.check_theta(points, theta)
        return self.to_input(self._counts(points + theta))

    def target(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The parameters ``[n, d]``, or the object ``[n, 2, N, N]`` (real, imaginary) with ``target_kind="object"``."""
        self.check_points(points)
        self.check_theta(points, theta)
        params = points + theta
        if self.target_kind == "object":
            o = self._object(params)
            return torch.stack([o.real, o.imag], dim=1)
        return params

    def measure(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A Poisson-noisy measurement ``[n, M, M]`` of ``points``, in the input's transform.

        Each pixel counts ``Poisson(lambda)`` photons (zero behind the beam stop), drawn in
        float64 with ``generator`` (on its device), returned in the dtype and device of
        ``points``.
        """
        self.check_points(points)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        gdev = generator.device if generator is not None else points.device
        rate = self._counts(points.to(device=gdev, dtype=torch.float64))
        noisy = torch.poisson(rate, generator=generator)
        return self.to_input(noisy).to(dtype=points.dtype, device=points.device)

    # ------------------------------------------------------------------ analytic jets

    def jets(self, points: torch.Tensor, order: int = 2) -> tuple[Jet, Jet]:
        r"""Jets of the input and the target at ``theta = 0``, in closed form.

        The object's derivatives are those of Gaussians (:meth:`object_jets`); the far field
        is linear in the object, so its jets are the DFTs of the object's jets; then the
        product rule for the intensity :math:`I = |F|^2`,

        .. math::
            I_i = 2\,\mathrm{Re}(\bar F F_i), \qquad
            I_{ij} = 2\,\mathrm{Re}(\bar F_i F_j + \bar F F_{ij}),

        and the chain rule for the transform (``log1p``). The same numbers as the
        ``torch.func`` default (:meth:`default_jets`, which the contract tests compare it with),
        2x to 10x faster in float32 at batches of 1 to 256 (``benchmarks/render.py``).
        """
        self.check_points(points)
        check_int("order", order, minimum=0, maximum=2)
        o = self.object_jets(points, order)
        x = self._input_jet(o, order)
        if self.target_kind == "object":
            y = Jet(*(torch.stack([t.real, t.imag], dim=-3) for t in o))
        else:
            n, d = points.shape
            parts = [points.clone()]
            if order >= 1:
                parts.append(torch.eye(d, dtype=points.dtype, device=points.device).expand(n, d, d).clone())
            if order >= 2:
                parts.append(points.new_zeros(n, d * (d + 1) // 2, d))
            y = Jet(*parts)
        return x, y

    def _input_jet(self, o: list[torch.Tensor], order: int) -> Jet:
        """The input's jet from the object's (:meth:`object_jets`), row by row of the pairs."""
        M, N, d = self.grid_size, self.object_size, self.param_dim
        real = o[0].real.dtype
        # fftshift folded into the DFT: modulating the object by exp(2 pi i s (j + k) / M)
        # rolls its spectrum by s = M // 2 in both axes, as fftshift does.
        j = torch.arange(N, dtype=real, device=o[0].device)
        ramp = torch.exp((2j * math.pi * (M // 2) / M) * (j[:, None] + j[None, :]))
        F = [torch.fft.fft2(t * ramp, s=(M, M)) for t in o]
        log = self.transform == "log"
        scale = self.photons / self.reference_intensity() / (self.count_scale if log else 1.0)
        if self.beam_stop > 0:
            scale = scale * self.measured(real, o[0].device)
        out_scale = 1.0 if log else self.grid_size**2 / self.photons
        lam = (F[0].real ** 2 + F[0].imag ** 2) * scale
        inv = 1.0 / (1.0 + lam) if log else None
        parts = [torch.log1p(lam) if log else lam * out_scale]
        if order >= 1:
            conj0 = F[0].conj()[:, None]
            lam1 = 2 * (conj0 * F[1]).real * scale
            parts.append(lam1 * inv[:, None] if log else lam1 * out_scale)
        if order >= 2:
            n = o[0].shape[0]
            d2 = parts[0].new_empty(n, d * (d + 1) // 2, M, M)
            cross = 2 * (conj0 * F[2]).real  # 2 Re(conj(F) F_ij), [n, P, M, M]
            re, im = F[1].real, F[1].imag
            start = 0
            for i in range(d):
                rows = slice(start, start + d - i)
                block = cross[:, rows].addcmul_(re[:, i : i + 1], re[:, i:], value=2).addcmul_(
                    im[:, i : i + 1], im[:, i:], value=2).mul_(scale)
                if log:  # x_ij = lam_ij / (1 + lam) - x_i x_j
                    block.mul_(inv[:, None]).addcmul_(parts[1][:, i : i + 1], parts[1][:, i:], value=-1)
                else:
                    block.mul_(out_scale)
                d2[:, rows] = block
                start += d - i
            parts.append(d2)
        return Jet(*parts)

    def object_jets(self, points: torch.Tensor, order: int = 2) -> list[torch.Tensor]:
        """The object and its derivatives in the parameters, in closed form.

        Returns ``[o]``, ``[o, o_i]`` or ``[o, o_i, o_ij]``: complex ``[n, N, N]``,
        ``[n, d, N, N]``, ``[n, d(d+1)/2, N, N]`` (pairs ``i <= j`` in :func:`triu_pairs` order).
        """
        self.check_points(points)
        check_int("order", order, minimum=0, maximum=2)
        K, d = self.blobs, self.param_dim
        n = points.shape[0]
        dtype, device = points.dtype, points.device
        positions, amplitudes, phase = self.split(points)
        ux, uy = self.object_grid(dtype, device)
        w2 = torch.tensor(self.widths, dtype=dtype, device=device)[:, None, None] ** 2  # [K, 1, 1]
        r = torch.stack([ux - positions[:, :, 0, None, None], uy - positions[:, :, 1, None, None]], dim=2)  # [n,K,2,N,N]
        G = torch.exp(-(r**2).sum(dim=2) / (2 * w2))  # [n, K, N, N]
        s = torch.stack([ux**2 + uy**2, ux**2 - uy**2])  # [2, N, N]
        E = torch.exp(1j * (phase[:, :, None, None] * s).sum(dim=1))  # [n, N, N]
        m = (amplitudes[:, :, None, None] * G).sum(dim=1)
        out = [E * m]
        if order == 0:
            return out
        # Raw variables z = (P_1x, P_1y, ..., P_Kx, P_Ky, a_1..a_K); the parameters' positions
        # q map to them by P_k = q_k (k < K), P_K = -sum_k q_k: z = B theta_{q,a}.
        B = torch.zeros(3 * K, 3 * K - 2, dtype=dtype, device=device)
        eye2 = torch.eye(2, dtype=dtype, device=device)
        for k in range(K - 1):
            B[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = eye2
            B[2 * K - 2 : 2 * K, 2 * k : 2 * k + 2] = -eye2
        B[2 * K :, 2 * K - 2 :] = torch.eye(K, dtype=dtype, device=device)
        Gp = G[:, :, None] * r / w2[:, None]  # dG_k/dP_k, [n, K, 2, N, N]
        mz = torch.cat([(amplitudes[:, :, None, None, None] * Gp).reshape(n, 2 * K, *G.shape[-2:]), G], dim=1)
        m1 = torch.einsum("zt,nzuv->ntuv", B, mz)  # [n, 3K-2, N, N]
        o1 = torch.cat([E[:, None] * m1, 1j * s[None] * out[0][:, None]], dim=1)  # [n, d, N, N]
        out.append(o1)
        if order == 1:
            return out
        # m_zz: position-position blocks a_k d2G_k/dP_k^2 (block diagonal), position-amplitude dG_k/dP_k.
        Gpp = G[:, :, None, None] * (r[:, :, :, None] * r[:, :, None, :] / w2[:, None, None] ** 2
                                      - eye2[:, :, None, None] / w2[:, None, None])  # [n, K, 2, 2, N, N]
        mzz = G.new_zeros(n, 3 * K, 3 * K, *G.shape[-2:])
        for k in range(K):
            mzz[:, 2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = amplitudes[:, k, None, None, None, None] * Gpp[:, k]
            mzz[:, 2 * k : 2 * k + 2, 2 * K + k] = Gp[:, k]
            mzz[:, 2 * K + k, 2 * k : 2 * k + 2] = Gp[:, k]
        m2 = torch.einsum("zs,nzyuv,yt->nstuv", B, mzz, B)  # [n, 3K-2, 3K-2, N, N]
        o2 = o1.new_zeros(n, d, d, *G.shape[-2:])
        L = 3 * K - 2
        o2[:, :L, :L] = E[:, None, None] * m2
        cross = 1j * s[None, None] * o1[:, :L, None]  # d/dc_b of o_i = i s_b o_i, [n, L, 2, N, N]
        o2[:, :L, L:] = cross
        o2[:, L:, :L] = cross.transpose(1, 2)
        o2[:, L:, L:] = -(s[:, None] * s[None, :])[None] * out[0][:, None, None]
        i, j = triu_pairs(d, device=device)
        out.append(o2[:, i, j])
        return out
