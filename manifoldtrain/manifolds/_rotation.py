"""Rotation matrices (column-vector convention) and their generators."""

from __future__ import annotations

import torch

__all__ = ["axis_rotation", "rotation_matrix", "generators", "rotation_vector"]


def axis_rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Right-handed rotation by ``angle`` ``[...]`` about axis 0 (x), 1 (y) or 2 (z): ``[..., 3, 3]``.

    Acts on column vectors; differentiable in ``angle``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = ((one, zero, zero), (zero, c, -s), (zero, s, c))
    elif axis == 1:
        rows = ((c, zero, s), (zero, one, zero), (-s, zero, c))
    elif axis == 2:
        rows = ((c, -s, zero), (s, c, zero), (zero, zero, one))
    else:
        raise ValueError(f"axis: expected 0, 1 or 2, got {axis}")
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def rotation_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of rotation vectors ``w`` ``[..., 3]`` (axis times angle): ``[..., 3, 3]``.

    Rodrigues' formula :math:`R = I + \\frac{\\sin\\phi}{\\phi} K + \\frac{1-\\cos\\phi}{\\phi^2} K^2`
    with :math:`K = [w]_\\times`, :math:`\\phi = |w|`; series near :math:`\\phi = 0`.
    """
    phi2 = (w * w).sum(-1)
    small = phi2 < 1e-4
    safe2 = torch.where(small, torch.ones_like(phi2), phi2)
    phi = torch.sqrt(safe2)
    a = torch.where(small, 1 - phi2 / 6 + phi2 * phi2 / 120, torch.sin(phi) / phi)
    b = torch.where(small, 0.5 - phi2 / 24 + phi2 * phi2 / 720, (1 - torch.cos(phi)) / safe2)
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    k = torch.stack(
        [
            torch.stack([zero, -wz, wy], dim=-1),
            torch.stack([wz, zero, -wx], dim=-1),
            torch.stack([-wy, wx, zero], dim=-1),
        ],
        dim=-2,
    )
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def generators(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[3, 3, 3]``: the derivatives at 0 of :func:`axis_rotation` for axes x, y, z."""
    g = torch.zeros(3, 3, 3, dtype=dtype, device=device)
    g[0, 2, 1], g[0, 1, 2] = 1.0, -1.0
    g[1, 0, 2], g[1, 2, 0] = 1.0, -1.0
    g[2, 1, 0], g[2, 0, 1] = 1.0, -1.0
    return g


def rotation_vector(r: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``[..., 3]`` (axis times angle in ``[0, pi]``) of rotation matrices ``[..., 3, 3]``.

    The inverse of :func:`rotation_matrix`, through the unit quaternion (Shepperd's method:
    the largest of the four quaternion components is computed first, for accuracy at any
    angle).

    Differentiable everywhere the result is (autograd and ``torch.func`` alike, float32 and
    float64), including the identity: no branch that ``torch.where`` or the pivot selection
    discards ever sees a zero under a square root or in a denominator, so no NaN or inf leaks
    into the gradients ("double where").
    """
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    trace = m00 + m11 + m22
    cand = torch.stack([trace, m00, m11, m22], dim=-1)
    pick = cand.argmax(dim=-1)
    # 4 q_k^2 = 1 + 2 cand_k - trace for the k-th component (w, x, y, z); the picked one is the
    # largest of four squares that sum to 1, so its pivot is >= 1 for a rotation: one square
    # root, shared by the four candidate formulas, never at 0 (the clamp only guards matrices
    # that are far from orthogonal).
    tiny = torch.finfo(r.dtype).tiny
    pivot = cand.gather(-1, pick[..., None])[..., 0]
    s = torch.sqrt((1 + 2 * pivot - trace).clamp_min(tiny)) * 2
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    s01, s02, s12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    q0 = torch.stack([s / 4, d21 / s, d02 / s, d10 / s], -1)
    q1 = torch.stack([d21 / s, s / 4, s01 / s, s02 / s], -1)
    q2 = torch.stack([d02 / s, s01 / s, s / 4, s12 / s], -1)
    q3 = torch.stack([d10 / s, s02 / s, s12 / s, s / 4], -1)
    q = torch.stack([q0, q1, q2, q3], dim=-2).gather(-2, pick[..., None, None].expand(*pick.shape, 1, 4))[..., 0, :]
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q)  # angle in [0, pi]
    w, v = q[..., 0], q[..., 1:]
    # angle / |v| = 2 atan2(|v|, w) / |v|; near |v| = 0 (where |v| = sqrt(.) has no derivative)
    # its series 2/w (1 - |v|^2 / (3 w^2)), exact to round-off there and with the right first
    # and second derivatives. Each branch gets a safe argument where it is not taken.
    n2 = (v * v).sum(-1)
    small = n2 < torch.finfo(r.dtype).eps
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    w_small = torch.where(small, w, torch.ones_like(w))  # w ~ 1 where |v| is small
    series = 2.0 / w_small * (1.0 - n2 / (3.0 * w_small * w_small))
    ratio = torch.where(small, series, 2.0 * torch.atan2(n, w) / n)
    return v * ratio[..., None]
