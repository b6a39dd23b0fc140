"""Rotation matrices (column-vector convention) and their generators."""

from __future__ import annotations

import torch

__all__ = ["axis_rotation", "rotation_matrix", "generators"]


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
