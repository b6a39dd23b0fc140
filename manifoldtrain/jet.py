"""Jets: a function's value with its first and second derivatives at a batch of points.

Shape convention
----------------
This is the one shape convention of the library; every function that takes or
returns jets follows it.

* points: ``[n, *point_shape]``; local coordinates ``theta``: ``[n, d]``.
* ``Jet.value``: ``[n, *shape]``, the value at ``theta = 0``.
* ``Jet.d1``: ``[n, d, *shape]``, ``d1[:, i] = df/dtheta_i``.
* ``Jet.d2``: ``[n, d(d+1)/2, *shape]``, ``d2[:, k] = d^2 f/(dtheta_i dtheta_j)`` for the
  ``k``-th pair ``i <= j`` in row-major upper-triangle order ``(0,0), (0,1), ..., (0,d-1),
  (1,1), ..., (d-1,d-1)``; see :func:`triu_pairs`.
"""

from __future__ import annotations

import functools

import attrs
import torch

from manifoldtrain._validation import check_int, check_tensor

__all__ = ["Jet", "triu_pairs", "pair_index", "num_pairs", "pair_weights"]


def num_pairs(d: int) -> int:
    """Number of pairs ``i <= j`` among ``d`` coordinates, ``d(d+1)/2``."""
    return d * (d + 1) // 2


@functools.lru_cache(maxsize=None)
def _triu_pairs_cached(d: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rows, cols = [], []
    for i in range(d):
        for j in range(i, d):
            rows.append(i)
            cols.append(j)
    return tuple(rows), tuple(cols)


def triu_pairs(d: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors ``(i, j)`` of the pairs ``i <= j`` in row-major upper-triangle order.

    Examples
    --------
    >>> i, j = triu_pairs(3)
    >>> list(zip(i.tolist(), j.tolist()))
    [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    """
    check_int("d", d, minimum=1)
    rows, cols = _triu_pairs_cached(d)
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(cols, dtype=torch.long, device=device),
    )


def pair_weights(d: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """How often each stored pair occurs in the full symmetric ``d x d`` matrix: 1 on the
    diagonal, 2 off it (``[d(d+1)/2]``). A sum over the full matrix is a weighted sum over pairs.

    Examples
    --------
    >>> pair_weights(3).tolist()
    [1.0, 2.0, 2.0, 1.0, 2.0, 1.0]
    """
    i, j = triu_pairs(d, device=device)
    return torch.where(i == j, 1.0, 2.0).to(dtype)


def pair_index(i: int, j: int, d: int) -> int:
    """Position of the pair ``(i, j)`` (either order) in the ``d(d+1)/2`` pairs.

    Examples
    --------
    >>> pair_index(1, 2, 3), pair_index(2, 1, 3)
    (4, 4)
    """
    check_int("d", d, minimum=1)
    check_int("i", i, minimum=0, maximum=d - 1)
    check_int("j", j, minimum=0, maximum=d - 1)
    i, j = min(i, j), max(i, j)
    return i * d - i * (i - 1) // 2 + (j - i)


@attrs.frozen(eq=False)
class Jet:
    """Value and derivatives of a function of ``d`` local coordinates, at ``n`` points.

    Parameters
    ----------
    value : Tensor
        ``[n, *shape]``.
    d1 : Tensor or None
        ``[n, d, *shape]``: first derivatives (``None`` for a jet of order 0).
    d2 : Tensor or None
        ``[n, d(d+1)/2, *shape]``: second derivatives, pairs ``i <= j`` in row-major
        upper-triangle order (``None`` for a jet of order 0 or 1).

    All present components share dtype and device. A jet of order 2 needs ``d1``.

    Examples
    --------
    >>> import torch
    >>> jet = Jet(torch.zeros(4, 3), torch.zeros(4, 2, 3), torch.zeros(4, 3, 3))
    >>> jet.order, jet.param_dim, jet.shape, len(jet)
    (2, 2, (3,), 4)
    """

    value: torch.Tensor
    d1: torch.Tensor | None = None
    d2: torch.Tensor | None = None

    def __attrs_post_init__(self) -> None:
        check_tensor("value", self.value, finite=False)
        if self.value.dim() < 1:
            raise ValueError(f"value: expected shape [n, *shape], got {list(self.value.shape)}")
        n, shape = self.value.shape[0], tuple(self.value.shape[1:])
        if self.d1 is None:
            if self.d2 is not None:
                raise ValueError("d2: a jet with second derivatives needs first derivatives (d1 is None)")
            return
        check_tensor("d1", self.d1, finite=False)
        if self.d1.dim() != self.value.dim() + 1 or self.d1.shape[0] != n or tuple(self.d1.shape[2:]) != shape:
            raise ValueError(
                f"d1: expected shape [{n}, d, {', '.join(map(str, shape))}] to match value "
                f"{list(self.value.shape)}, got {list(self.d1.shape)}"
            )
        for name in ("d1", "d2"):
            t = getattr(self, name)
            if t is not None and (t.dtype != self.value.dtype or t.device != self.value.device):
                raise ValueError(
                    f"{name}: expected dtype {self.value.dtype} on {self.value.device} like value, "
                    f"got {t.dtype} on {t.device}"
                )
        if self.d2 is not None:
            d = self.d1.shape[1]
            check_tensor("d2", self.d2, shape=(n, num_pairs(d), *shape), finite=False)

    @property
    def order(self) -> int:
        """Highest derivative order held: 0, 1 or 2."""
        return 0 if self.d1 is None else (1 if self.d2 is None else 2)

    @property
    def param_dim(self) -> int | None:
        """Number of local coordinates ``d`` (``None`` for an order-0 jet)."""
        return None if self.d1 is None else self.d1.shape[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one value, without the batch dimension."""
        return tuple(self.value.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def device(self) -> torch.device:
        return self.value.device

    def __len__(self) -> int:
        return self.value.shape[0]

    def components(self) -> tuple[torch.Tensor, ...]:
        """The present components, ``(value,)``, ``(value, d1)`` or ``(value, d1, d2)``."""
        return tuple(t for t in (self.value, self.d1, self.d2) if t is not None)

    def _map(self, fn) -> Jet:
        return Jet(*(fn(t) for t in self.components()))

    def __getitem__(self, index) -> Jet:
        """Select samples along the batch dimension (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def to(self, *args, **kwargs) -> Jet:
        """Move or cast every component, as :meth:`torch.Tensor.to`."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def truncate(self, order: int) -> Jet:
        """The same jet up to ``order`` (0, 1 or 2, at most :attr:`order`)."""
        check_int("order", order, minimum=0, maximum=self.order)
        return Jet(*self.components()[: order + 1])

    def d2_matrix(self) -> torch.Tensor:
        """Second derivatives as a full symmetric ``[n, d, d, *shape]`` tensor (a gather, no
        in-place writes: safe under ``torch.func`` transforms)."""
        if self.d2 is None:
            raise ValueError("d2_matrix: this jet has no second derivatives (order < 2)")
        d = self.d1.shape[1]
        rows = torch.arange(d).reshape(-1, 1).expand(d, d)
        lo, hi = torch.minimum(rows, rows.T), torch.maximum(rows, rows.T)
        index = (lo * d - lo * (lo - 1) // 2 + (hi - lo)).reshape(-1).to(self.device)  # pair_index, vectorised
        return self.d2[:, index].reshape(len(self), d, d, *self.shape)

    def directional(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Derivatives along directions ``v`` in the local coordinates.

        Parameters
        ----------
        v : Tensor
            ``[n, k, d]``: ``k`` directions per sample.

        Returns
        -------
        d1_v : Tensor
            ``[n, k, *shape]``, :math:`f_v = \\sum_i v_i f_i`.
        d2_v : Tensor or None
            ``[n, k, *shape]``, :math:`f_{vv} = \\sum_{i,j} v_i v_j f_{ij}` (``None`` below order 2).
        """
        d1 = self.along(v)
        return d1, (self.mixed(v, v) if self.d2 is not None else None)

    def along(self, v: torch.Tensor) -> torch.Tensor:
        """First derivatives along directions ``v`` ``[n, k, d]``: :math:`f_v = \\sum_i v_i f_i`,
        ``[n, k, *shape]``."""
        if self.d1 is None:
            raise ValueError("along: this jet has no derivatives (order 0)")
        n, d = self.d1.shape[:2]
        check_tensor("v", v, shape=(n, None, d), finite=False)
        v = v.to(self.d1)
        return torch.einsum("nkd,ndp->nkp", v, self.d1.reshape(n, d, -1)).reshape(n, v.shape[1], *self.shape)

    def mixed(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Mixed second derivatives along pairs of directions, ``[n, k, *shape]``:

        .. math:: f_{uv} = \\sum_{i,j} u_i v_j f_{ij}
            = \\sum_{i \\le j} \\frac{u_i v_j + u_j v_i}{1 + [i = j]} f_{ij}.

        ``u`` and ``v`` are ``[n, k, d]``.
        """
        if self.d2 is None:
            raise ValueError("mixed: this jet has no second derivatives (order < 2)")
        n, d = self.d1.shape[:2]
        check_tensor("u", u, shape=(n, None, d), finite=False)
        check_tensor("v", v, shape=(n, u.shape[1], d), finite=False)
        u, v = u.to(self.d2), v.to(self.d2)
        i, j = triu_pairs(d, device=self.device)
        coef = (u[:, :, i] * v[:, :, j] + u[:, :, j] * v[:, :, i]) * torch.where(i == j, 0.5, 1.0).to(u)
        out = torch.einsum("nkq,nqp->nkp", coef, self.d2.reshape(n, len(i), -1))
        return out.reshape(n, u.shape[1], *self.shape)
