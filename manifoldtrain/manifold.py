"""The abstract :class:`Manifold` and the ``torch.func`` jets every manifold gets by default."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch.func import jvp, vmap

from manifoldtrain._validation import check_int, check_names, check_tensor
from manifoldtrain.jet import Jet, triu_pairs

__all__ = ["Manifold", "chart_jet", "target_names"]


def chart_jet(
    fn: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    order: int = 2,
    *,
    chunk_size: int | None = None,
) -> Jet:
    """Jet of a batched chart ``fn`` at ``theta`` by forward-mode ``torch.func``.

    ``fn`` maps ``theta`` ``[n, d]`` to ``[n, *shape]``, sample by sample (sample ``k`` of the
    output depends on sample ``k`` of ``theta`` only). First derivatives are ``jvp`` along the
    ``d`` coordinate directions, second derivatives nested ``jvp`` along the ``d(d+1)/2`` pairs;
    both are vectorised over directions with ``vmap``, so ``fn`` must be ``vmap``-compatible
    (no data-dependent Python control flow on ``theta``, no in-place writes into ``theta``).
    The network-sized Jacobian is never formed.

    .. math::
        f_i = \\frac{\\partial f}{\\partial \\theta_i}, \\qquad
        f_{ij} = \\frac{\\partial^2 f}{\\partial \\theta_i \\partial \\theta_j}, \\quad i \\le j

    Parameters
    ----------
    fn : callable
        ``[n, d] -> [n, *shape]``.
    theta : Tensor
        ``[n, d]``, where to take the jet (usually zeros).
    order : int
        0, 1 or 2.
    chunk_size : int, optional
        Directions evaluated at once by ``vmap`` (``None``: all); lower it to save memory.

    Returns
    -------
    Jet
        ``value [n, *shape]``, ``d1 [n, d, *shape]``, ``d2 [n, d(d+1)/2, *shape]``.

    Examples
    --------
    >>> import torch
    >>> theta = torch.zeros(2, 2, dtype=torch.float64)
    >>> jet = chart_jet(lambda t: (t[:, :1] + 1.0) * t[:, 1:] + t[:, :1] ** 2, theta)
    >>> jet.d1[0, :, 0].tolist(), jet.d2[0, :, 0].tolist()
    ([0.0, 1.0], [2.0, 1.0, 0.0])
    """
    check_int("order", order, minimum=0, maximum=2)
    check_tensor("theta", theta, shape=(None, None), finite=False)
    value = fn(theta)
    if order == 0:
        return Jet(value)
    n, d = theta.shape
    eye = torch.eye(d, dtype=theta.dtype, device=theta.device)

    def along(v: torch.Tensor) -> torch.Tensor:
        return jvp(fn, (theta,), (v.expand(n, d),))[1]

    d1 = vmap(along, chunk_size=chunk_size)(eye).movedim(0, 1)
    if order == 1:
        return Jet(value, d1)

    def along_pair(vi: torch.Tensor, vj: torch.Tensor) -> torch.Tensor:
        def first(t: torch.Tensor) -> torch.Tensor:
            return jvp(fn, (t,), (vi.expand(n, d),))[1]

        return jvp(first, (theta,), (vj.expand(n, d),))[1]

    i, j = triu_pairs(d, device=theta.device)
    d2 = vmap(along_pair, chunk_size=chunk_size)(eye[i], eye[j]).movedim(0, 1)
    return Jet(value, d1, d2)


def _inside_transform(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` transform's wrapper (data-dependent checks cannot run)."""
    is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return True if is_wrapped is None else bool(is_wrapped(t))


class Manifold(abc.ABC):
    """A smooth, computable data manifold: a chart of inputs and targets around each point.

    At a point ``p`` and local coordinates ``theta`` in :math:`\\mathbb{R}^d` around it
    (``theta = 0`` is ``p`` itself) the manifold gives an input :math:`x(p, \\theta)` and a target
    :math:`y(p, \\theta)`. Its jets are their derivatives with respect to ``theta`` at
    ``theta = 0``. Shapes follow the convention of :mod:`manifoldtrain.jet`: points
    ``[n, *point_shape]``, inputs ``[n, *input_shape]``, targets ``[n, *target_shape]``,
    jets ``[n, d, ...]`` and ``[n, d(d+1)/2, ...]``. Results take the dtype and device of
    ``points``.

    Implementing a new manifold
    ---------------------------
    **Must** be provided by a subclass (a class attribute is enough for the first four):

    * :attr:`param_dim` -- ``d``, the number of local coordinates;
    * :attr:`point_shape`, :attr:`input_shape`, :attr:`target_shape`;
    * :meth:`sample` -- points drawn from the data distribution;
    * :meth:`input` and :meth:`target` -- the chart, batched over ``n`` and written with
      differentiable ``torch`` operations that ``torch.func.jvp`` and ``vmap`` can transform
      (so the default :meth:`jets` works).

    **May** be overridden:

    * :meth:`jets` -- the default takes nested forward-mode derivatives of :meth:`input` and
      :meth:`target` with :func:`chart_jet`; override it with analytic derivatives for speed
      (and check them with :func:`manifoldtrain.testing.check_manifold`, which compares them
      with the default and with finite differences);
    * :meth:`check_domain` -- reject points outside the manifold's valid range (the default
      accepts every finite point);
    * :attr:`coordinate_names` -- labels of the local coordinates for plots;
    * :attr:`target_names` -- names of the target's outputs, one per element of
      ``target_shape`` in row-major order (default ``y0, y1, ...``), for the per-output test
      RMSE of ``results.json``, ``manifoldtrain evaluate`` and the demo; a class attribute
      is enough, e.g. ``target_names = ("x", "y", "vx", "vy")``;
    * :meth:`move` -- the point that local coordinates ``theta`` reach from ``p``, so that
      ``input(move(p, theta), 0) == input(p, theta)`` (to re-centre the chart, e.g. in the
      oracle's Gauss-Newton projection).
      The default, ``points + theta``, is right whenever ``point_shape == (param_dim,)`` and
      the chart is a translation of the point coordinates, :math:`x(p, \\theta) = x(p + \\theta, 0)`
      and the same for the target (as in the example below); otherwise override it (the
      default raises ``NotImplementedError`` when the shapes differ).
      :func:`manifoldtrain.testing.check_move` verifies either.

    In :meth:`input` and :meth:`target`, call :meth:`check_points` and :meth:`check_theta`
    first, and in :meth:`sample` :meth:`check_sample_arguments`, so that bad arguments get a
    clear error.

    Examples
    --------
    A circle of radius 2 whose input is a point in the plane and whose target is the angle:

    >>> import math, torch
    >>> class Circle(Manifold):
    ...     param_dim, point_shape, input_shape, target_shape = 1, (1,), (2,), (1,)
    ...     def sample(self, n, generator=None, *, dtype=None, device=None):
    ...         u = torch.rand(n, 1, generator=generator, dtype=dtype or torch.float64)
    ...         return (2 * math.pi * u).to(device)
    ...     def input(self, points, theta):
    ...         self.check_points(points); self.check_theta(points, theta)
    ...         a = points + theta
    ...         return 2 * torch.cat([torch.cos(a), torch.sin(a)], dim=1)
    ...     def target(self, points, theta):
    ...         self.check_points(points); self.check_theta(points, theta)
    ...         return points + theta
    >>> x, y = Circle().jets(torch.zeros(1, 1, dtype=torch.float64))
    >>> [(t + 0.0).tolist() for t in (x.value, x.d1, x.d2, y.d1)]  # + 0.0 turns -0.0 into 0.0
    [[[2.0, 0.0]], [[[0.0, 2.0]]], [[[-2.0, 0.0]]], [[[1.0]]]]
    """

    @property
    @abc.abstractmethod
    def param_dim(self) -> int:
        """``d``, the number of local coordinates of the chart."""

    @property
    @abc.abstractmethod
    def point_shape(self) -> tuple[int, ...]:
        """Shape of one point, without the batch dimension."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (what the network sees), without the batch dimension."""

    @property
    @abc.abstractmethod
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one target (what the network predicts), without the batch dimension."""

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` points ``[n, *point_shape]`` from the manifold's data distribution.

        ``generator`` makes the draw reproducible; ``dtype`` defaults to
        ``torch.get_default_dtype()``.
        """

    @staticmethod
    def check_sample_arguments(
        n: object, generator: object, dtype: torch.dtype | None
    ) -> tuple[torch.dtype, torch.device]:
        """Check :meth:`sample`'s arguments; returns the dtype to return (``dtype``, default
        ``torch.get_default_dtype()``) and the device to draw on (the generator's, else the CPU).

        Raises ``ValueError`` / ``TypeError`` naming ``n`` (an int >= 0), ``generator`` (a
        ``torch.Generator`` or None) or ``dtype`` (float32 or float64).
        """
        check_int("n", n, minimum=0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        return dtype, generator.device if generator is not None else torch.device("cpu")

    @abc.abstractmethod
    def input(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The input chart :math:`x(p, \\theta)`: ``[n, *point_shape], [n, d] -> [n, *input_shape]``."""

    @abc.abstractmethod
    def target(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The target chart :math:`y(p, \\theta)`: ``[n, *point_shape], [n, d] -> [n, *target_shape]``."""

    @property
    def coordinate_names(self) -> tuple[str, ...]:
        """Names of the ``d`` local coordinates, for labels (default ``theta0, theta1, ...``)."""
        return tuple(f"theta{i}" for i in range(self.param_dim))

    @property
    def target_names(self) -> tuple[str, ...]:
        """Names of the target's ``prod(target_shape)`` outputs, in row-major order, for
        per-output metrics (default ``y0, y1, ...``)."""
        return tuple(f"y{i}" for i in range(math.prod(self.target_shape)))

    def check_domain(self, points: torch.Tensor) -> None:
        """Raise ``ValueError`` naming ``points`` if any point lies outside the valid range.

        Called by :meth:`check_points` after the shape, dtype and finiteness checks. The
        default accepts every finite point.
        """

    def check_points(self, points: object) -> torch.Tensor:
        """Check ``points``: a float32/float64 tensor ``[n, *point_shape]``, finite, in the domain.

        Raises
        ------
        TypeError
            Not a tensor, or not float32/float64.
        ValueError
            Wrong shape, NaN or inf, or outside the valid range (:meth:`check_domain`).
        """
        check_tensor("points", points, shape=(None, *self.point_shape))
        self.check_domain(points)
        return points

    def check_theta(self, points: torch.Tensor, theta: object, *, finite: bool | None = None) -> torch.Tensor:
        """Check ``theta``: ``[n, d]`` with the dtype and device of ``points``, finite.

        Finiteness (a data-dependent check) is skipped inside ``torch.func`` transforms
        (``vmap``, ``jvp``, ``grad``, ...: ``theta`` is then a transform's wrapper), so that the
        chart's checks also run there; ``finite=True`` or ``False`` forces it on or off.

        Raises
        ------
        TypeError
            Not a float32/float64 tensor, or a dtype or device other than those of ``points``.
        ValueError
            Wrong shape, or NaN or inf.
        """
        if finite is None:
            finite = isinstance(theta, torch.Tensor) and not _inside_transform(theta)
        check_tensor("theta", theta, shape=(points.shape[0], self.param_dim), finite=finite)
        if theta.dtype != points.dtype or theta.device != points.device:
            raise TypeError(
                f"theta: expected dtype {points.dtype} on {points.device} like points, "
                f"got {theta.dtype} on {theta.device}"
            )
        return theta

    def move(self, points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The points that local coordinates ``theta`` reach from ``points``: the chart re-centred.

        ``input(move(p, theta), 0) == input(p, theta)`` and ``target(move(p, theta), 0) ==
        target(p, theta)``, so an algorithm that walks the manifold (the oracle's Gauss-Newton
        projection) can take jets at the pose it has reached.

        Parameters
        ----------
        points : Tensor
            ``[n, *point_shape]``, float32 or float64, valid points (:meth:`check_points`).
        theta : Tensor
            ``[n, d]``, finite, with the dtype and device of ``points``.

        Returns
        -------
        Tensor
            ``[n, *point_shape]``, dtype and device of ``points``.

        Raises
        ------
        TypeError, ValueError
            Bad ``points`` or ``theta`` (NaN or inf in ``theta`` is a ``ValueError``).
        NotImplementedError
            The default cannot apply: ``point_shape != (param_dim,)``; override :meth:`move`.

        Notes
        -----
        The default returns ``points + theta``. That is right when the chart is a translation
        of the point coordinates, :math:`x(p, \\theta) = x(p + \\theta, 0)` (and the same for
        :math:`y`), and wrong otherwise (for example when ``theta`` is scaled, or rotates
        about the point): override it then. :func:`manifoldtrain.testing.check_move` checks
        whichever is in use. The result is not checked against :meth:`check_domain`: a large
        ``theta`` may leave the valid range, which the next :meth:`input` reports.
        """
        self.check_points(points)
        self.check_theta(points, theta, finite=True)
        if tuple(self.point_shape) != (self.param_dim,):
            raise NotImplementedError(
                f"{type(self).__name__}.move: the default (points + theta) needs point_shape == (param_dim,), "
                f"got point_shape {tuple(self.point_shape)} and param_dim {self.param_dim}; override "
                "move(points, theta) so that input(move(p, theta), 0) == input(p, theta)"
            )
        return points + theta

    def jets(self, points: torch.Tensor, order: int = 2) -> tuple[Jet, Jet]:
        """Jets of the input and of the target at ``theta = 0``.

        Parameters
        ----------
        points : Tensor
            ``[n, *point_shape]``, float32 or float64.
        order : int
            0, 1 or 2.

        Returns
        -------
        input_jet, target_jet : Jet
            ``value [n, *shape]``, ``d1 [n, d, *shape]``, ``d2 [n, d(d+1)/2, *shape]`` with
            ``shape`` the input or target shape; dtype and device of ``points``.

        Notes
        -----
        This default differentiates :meth:`input` and :meth:`target` with nested
        ``torch.func.jvp`` (:func:`chart_jet`); subclasses may override it with analytic
        derivatives. :meth:`default_jets` always runs the default.
        """
        return Manifold.default_jets(self, points, order)

    def default_jets(self, points: torch.Tensor, order: int = 2, *, chunk_size: int | None = None) -> tuple[Jet, Jet]:
        """The ``torch.func`` jets of :meth:`input` and :meth:`target`, whatever :meth:`jets` does.

        ``chunk_size`` bounds how many directions are evaluated at once (see :func:`chart_jet`).
        """
        self.check_points(points)
        check_int("order", order, minimum=0, maximum=2)
        theta = points.new_zeros(points.shape[0], self.param_dim)
        return (
            chart_jet(lambda t: self.input(points, t), theta, order, chunk_size=chunk_size),
            chart_jet(lambda t: self.target(points, t), theta, order, chunk_size=chunk_size),
        )


def target_names(manifold: Manifold) -> tuple[str, ...]:
    """``manifold.target_names``, checked: ``prod(target_shape)`` distinct, non-empty strings
    (one per target output, row-major); a ``TypeError`` or ``ValueError`` naming
    ``ClassName.target_names`` otherwise."""
    names = manifold.target_names
    return check_names(f"{type(manifold).__name__}.target_names", names, math.prod(manifold.target_shape))


def check_is_manifold(name: str, value: object) -> Manifold:
    """``value`` if it is a :class:`Manifold`, else a TypeError naming ``name``.

    >>> check_is_manifold("manifold", None)
    Traceback (most recent call last):
    ...
    TypeError: manifold: expected a Manifold, got NoneType
    """
    if not isinstance(value, Manifold):
        raise TypeError(f"{name}: expected a Manifold, got {type(value).__name__}")
    return value
