"""The network's jet along the manifold, in forward mode.

For an input jet :math:`(x, x_i, x_{ij})` the network's jet is

.. math::
    N(x), \\qquad N'(x)\\, x_i, \\qquad N''(x)[x_i, x_j] + N'(x)\\, x_{ij}.

Two implementations, which the tests compare:

* :func:`network_jet` (fast, *Taylor mode*): all ``1 + d + d(d+1)/2`` jet rows pass through
  the layers together, stacked as ``[n, rows, *features]``; a linear layer is one matrix
  product over all rows, an activation applies the chain rule of :mod:`manifoldtrain.nn`.
  Supports ``nn.Sequential`` models of the layers listed there.
* :func:`network_jet_nested` (reference, any model): nested ``torch.func.jvp`` along the ``d``
  directions and ``d(d+1)/2`` pairs, vectorised with ``vmap``.

Neither forms the network's Jacobian. :func:`directional_network_jet` gives derivatives along
``k`` random combinations of the coordinates, the cheap estimate of the derivative loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp, vmap

from manifoldtrain._validation import check_int, check_tensor
from manifoldtrain.jet import Jet, triu_pairs
from manifoldtrain.nn import Affine, SmoothActivation

__all__ = ["network_jet", "network_jet_nested", "directional_network_jet", "check_jet_model"]

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d)
_SHAPE = (nn.Flatten, nn.Unflatten, nn.Identity)


def check_jet_model(model: nn.Module) -> nn.Sequential:
    """Check that the Taylor-mode pass supports every layer of ``model``; return it.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Sequential`` or has a layer without a jet rule, naming
        the layer (e.g. a ReLU: not twice differentiable).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: the Taylor-mode jet needs an nn.Sequential, got {type(model).__name__}")
    for k, layer in enumerate(model):
        if isinstance(layer, nn.Sequential):
            check_jet_model(layer)
        elif not isinstance(layer, (*_LINEAR, *_SHAPE, Affine, SmoothActivation)):
            raise TypeError(
                f"model: layer {k} ({type(layer).__name__}) has no jet rule; derivative training needs "
                "twice-differentiable activations (manifoldtrain.nn: Tanh, Sigmoid, Softplus, GELU, SiLU, Sine) "
                "and linear or shape layers (Linear, Conv1d, Conv2d, Affine, Flatten, Unflatten)"
            )
    return model


def _taylor(model: nn.Sequential, rows: torch.Tensor, d: int, pair_i: torch.Tensor, pair_j: torch.Tensor) -> torch.Tensor:
    """Push stacked jet rows ``[n, 1 + d + P, *f]`` through ``model``.

    Row 0 is the value, rows ``1..d`` first derivatives, the last ``P`` second derivatives
    of the pairs ``(pair_i, pair_j)`` (indices into the first-derivative rows).
    """
    n, r = rows.shape[:2]
    for layer in model:
        if isinstance(layer, nn.Sequential):
            rows = _taylor(layer, rows, d, pair_i, pair_j)
        elif isinstance(layer, _LINEAR):
            flat = rows.reshape(n * r, *rows.shape[2:])
            if isinstance(layer, nn.Linear):
                out = nn.functional.linear(flat, layer.weight)
            else:
                out = layer._conv_forward(flat, layer.weight, None)
            out = out.reshape(n, r, *out.shape[1:])
            if layer.bias is not None:
                bias = layer.bias if isinstance(layer, nn.Linear) else layer.bias.reshape(-1, *([1] * (out.dim() - 3)))
                out = torch.cat([out[:, :1] + bias, out[:, 1:]], dim=1)
            rows = out
        elif isinstance(layer, Affine):
            scaled = rows * layer.scale
            rows = torch.cat([scaled[:, :1] + layer.shift, scaled[:, 1:]], dim=1)
        elif isinstance(layer, _SHAPE):
            out = layer(rows.reshape(n * r, *rows.shape[2:]))
            rows = out.reshape(n, r, *out.shape[1:])
        elif isinstance(layer, SmoothActivation):
            f, df, d2f = layer.derivatives(rows[:, :1])
            d1 = rows[:, 1 : 1 + d]
            parts = [f, df * d1]
            if rows.shape[1] > 1 + d:
                parts.append(df * rows[:, 1 + d :] + d2f * d1[:, pair_i] * d1[:, pair_j])
            rows = torch.cat(parts, dim=1)
        else:
            check_jet_model(nn.Sequential(layer))
    return rows


def network_jet(model: nn.Sequential, input_jet: Jet) -> Jet:
    """The network's jet along the manifold by one Taylor-mode pass (fast path).

    Parameters
    ----------
    model : nn.Sequential
        Layers with jet rules (:func:`check_jet_model`).
    input_jet : Jet
        ``value [n, *input_shape]``, ``d1 [n, d, *input_shape]``, ``d2 [n, d(d+1)/2, *input_shape]``
        (order 0, 1 or 2).

    Returns
    -------
    Jet
        Of the same order: ``[n, *output_shape]``, ``[n, d, ...]``, ``[n, d(d+1)/2, ...]``.

    Examples
    --------
    >>> import torch
    >>> from manifoldtrain.nn import Tanh
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), Tanh(), torch.nn.Linear(4, 2)).double()
    >>> x = Jet(torch.randn(5, 3).double(), torch.randn(5, 2, 3).double(), torch.randn(5, 3, 3).double())
    >>> fast, slow = network_jet(model, x), network_jet_nested(model, x)
    >>> all(torch.allclose(a, b) for a, b in zip(fast.components(), slow.components()))
    True
    """
    check_jet_model(model)
    if not isinstance(input_jet, Jet):
        raise TypeError(f"input_jet: expected a Jet, got {type(input_jet).__name__}")
    comps = input_jet.components()
    d = input_jet.param_dim or 0
    rows = torch.cat([comps[0][:, None], *comps[1:]], dim=1)
    pair_i, pair_j = triu_pairs(d, device=rows.device) if input_jet.order == 2 else (None, None)
    out = _taylor(model, rows, d, pair_i, pair_j)
    parts = [out[:, 0]]
    if input_jet.order >= 1:
        parts.append(out[:, 1 : 1 + d])
    if input_jet.order == 2:
        parts.append(out[:, 1 + d :])
    return Jet(*parts)


def network_jet_nested(model: nn.Module, input_jet: Jet, *, chunk_size: int | None = None) -> Jet:
    """The network's jet by nested ``torch.func.jvp`` (the straightforward reference; any model).

    ``N'(x) x_i`` is one ``jvp`` per direction; ``N''(x)[x_i, x_j] + N'(x) x_ij`` a ``jvp`` of a
    ``jvp`` plus a ``jvp`` per pair, all vectorised with ``vmap`` (``chunk_size`` at a time).
    """
    if not isinstance(input_jet, Jet):
        raise TypeError(f"input_jet: expected a Jet, got {type(input_jet).__name__}")
    x = input_jet.value
    value = model(x)
    if input_jet.order == 0:
        return Jet(value)

    def first(t):
        return jvp(model, (x,), (t,))[1]

    d1 = vmap(first, in_dims=1, out_dims=1, chunk_size=chunk_size)(input_jet.d1)
    if input_jet.order == 1:
        return Jet(value, d1)
    i, j = triu_pairs(input_jet.param_dim, device=x.device)

    def second(ti, tj, tij):
        inner = lambda z: jvp(model, (z,), (ti,))[1]  # noqa: E731
        return jvp(inner, (x,), (tj,))[1] + jvp(model, (x,), (tij,))[1]

    d2 = vmap(second, in_dims=1, out_dims=1, chunk_size=chunk_size)(input_jet.d1[:, i], input_jet.d1[:, j], input_jet.d2)
    return Jet(value, d1, d2)


def directional_network_jet(
    model: nn.Sequential, input_jet: Jet, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The network's derivatives along ``k`` directions of the local coordinates.

    With :math:`x_v = \\sum_i v_i x_i` and :math:`x_{vv} = \\sum_{ij} v_i v_j x_{ij}`, returns
    :math:`N(x)`, :math:`N'(x) x_v` and :math:`N''(x)[x_v, x_v] + N'(x) x_{vv}`: one Taylor-mode
    pass with ``1 + 2k`` rows instead of ``1 + d + d(d+1)/2``.

    Parameters
    ----------
    model : nn.Sequential
    input_jet : Jet
        Order 1 or 2.
    directions : Tensor
        ``[n, k, d]``.

    Returns
    -------
    value : Tensor
        ``[n, *out]``.
    d1_v, d2_v : Tensor
        ``[n, k, *out]`` (``d2_v`` is ``None`` for an order-1 input jet).
    """
    check_jet_model(model)
    if input_jet.order < 1:
        raise ValueError("input_jet: directional derivatives need a jet of order >= 1")
    n, d = len(input_jet), input_jet.param_dim
    check_tensor("directions", directions, shape=(n, None, d))
    k = directions.shape[1]
    check_int("directions.shape[1]", k, minimum=1)
    x_v, x_vv = input_jet.directional(directions)
    parts = [input_jet.value[:, None], x_v] + ([x_vv] if x_vv is not None else [])
    rows = torch.cat(parts, dim=1)
    diag = torch.arange(k, device=rows.device)
    out = _taylor(model, rows, k, diag, diag)
    return out[:, 0], out[:, 1 : 1 + k], (out[:, 1 + k :] if x_vv is not None else None)
