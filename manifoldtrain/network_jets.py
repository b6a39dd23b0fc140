"""The network's derivatives along the manifold, in forward mode.

For an input jet :math:`(x, x_i, x_{ij})` the network's jet is

.. math::
    N(x), \\qquad N'(x)\\, x_i, \\qquad N''(x)[x_i, x_j] + N'(x)\\, x_{ij}.

Everything here is built on one primitive, *jet rows*: at an input :math:`x` with
first-order tangents :math:`t_1, \\dots, t_r` (any vectors in input space) and second-order
rows given by pairs :math:`(a, b)` of them with a second-order input :math:`t_{ab}`, the
network's rows are

.. math::
    N(x), \\qquad N'(x)\\, t_a, \\qquad N''(x)[t_a, t_b] + N'(x)\\, t_{ab}.

The full jet is the case :math:`t_i = x_i` with every pair :math:`i \\le j` and
:math:`t_{ij} = x_{ij}`; derivatives along random directions of the coordinates,
:math:`t = x_u, x_v` with :math:`t_{uv} = x_{uv}`, and responses to input perturbations
:math:`t = \\delta` are others. Two implementations, which the tests compare:

* :func:`taylor_rows` (fast, *Taylor mode*): all rows pass through the layers together,
  stacked as ``[n, rows, *features]``; a linear layer is one matrix product over all rows, an
  activation applies the chain rule. Supports models built from layers with a *jet rule*
  (:func:`check_jet_model`, :func:`register_jet_rule`).
* :func:`nested_jvp_rows` (reference, any model): nested ``torch.func.jvp``, vectorised with
  ``vmap``. Chosen explicitly by the caller; nothing falls back to it silently.

Neither forms the network's Jacobian.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
from torch import nn
from torch.func import jvp, vmap

from manifoldtrain._validation import check_tensor
from manifoldtrain.jet import Jet, triu_pairs
from manifoldtrain.nn import GELU, Affine, Sigmoid, SiLU, SmoothActivation, Tanh

__all__ = [
    "RowLayout",
    "taylor_rows",
    "nested_jvp_rows",
    "network_jet",
    "network_jet_nested",
    "check_jet_model",
    "register_jet_rule",
    "JetRule",
]


@attrs.frozen(eq=False)
class RowLayout:
    """How stacked jet rows ``[n, 1 + first + len(pair_a), *features]`` are laid out.

    Row 0 is the value, rows ``1 .. first`` the first-order rows, the rest second-order rows;
    second-order row ``k`` belongs to the pair ``(pair_a[k], pair_b[k])`` of first-order rows
    (indices ``0 .. first - 1``).

    Attributes
    ----------
    first : int
        Number of first-order rows.
    pair_a, pair_b : Tensor
        ``[p]`` long, on the rows' device.
    """

    first: int
    pair_a: torch.Tensor
    pair_b: torch.Tensor


#: A jet rule maps a layer's stacked input rows to its output rows: ``rule(layer, rows, layout)``.
JetRule = Callable[[nn.Module, torch.Tensor, RowLayout], torch.Tensor]

_RULES: dict[type, JetRule] = {}


def register_jet_rule(layer_type: type, rule: JetRule) -> None:
    """Teach the Taylor-mode pass a layer type: ``rule(layer, rows, layout) -> rows``.

    ``rows`` is ``[n, 1 + layout.first + p, *features]`` (see :class:`RowLayout`); the rule
    returns the layer's output rows in the same layout. A module may instead define a method
    ``jet_rows(rows, layout)``, which takes precedence.

    Examples
    --------
    A layer that doubles its input is linear, so every row doubles:

    >>> class Double(nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> register_jet_rule(Double, lambda layer, rows, layout: 2 * rows)
    >>> x = Jet(torch.ones(1, 3), torch.ones(1, 2, 3), torch.ones(1, 3, 3))
    >>> network_jet(nn.Sequential(Double()), x).d2[0, 0].tolist()
    [2.0, 2.0, 2.0]
    """
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise TypeError(f"layer_type: expected a subclass of nn.Module, got {layer_type!r}")
    if not callable(rule):
        raise TypeError(f"rule: expected a callable (layer, rows, layout) -> rows, got {type(rule).__name__}")
    _RULES[layer_type] = rule


def _per_row(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` to every row as if it were a sample."""
    n, r = rows.shape[:2]
    out = layer(rows.reshape(n * r, *rows.shape[2:]))
    return out.reshape(n, r, *out.shape[1:])


def _linear_rule(layer, rows, layout):
    n, r = rows.shape[:2]
    flat = rows.reshape(n * r, *rows.shape[2:])
    if isinstance(layer, nn.Linear):
        out = nn.functional.linear(flat, layer.weight)
    else:
        out = layer._conv_forward(flat, layer.weight, None)
    out = out.reshape(n, r, *out.shape[1:])
    if layer.bias is None:
        return out
    bias = layer.bias if isinstance(layer, nn.Linear) else layer.bias.reshape(-1, *([1] * (out.dim() - 3)))
    return torch.cat([out[:, :1] + bias, out[:, 1:]], dim=1)


def _affine_rule(layer, rows, layout):
    scaled = rows * layer.scale
    return torch.cat([scaled[:, :1] + layer.shift, scaled[:, 1:]], dim=1)


def _shape_rule(layer, rows, layout):
    return _per_row(layer, rows)


def _activation_rule(derivatives):
    """The chain rule for an elementwise activation with ``derivatives(v) = (f, f', f'')``."""

    def rule(layer, rows, layout):
        f, df, d2f = derivatives(layer, rows[:, :1])
        d1 = rows[:, 1 : 1 + layout.first]
        parts = [f, df * d1]
        if rows.shape[1] > 1 + layout.first:
            parts.append(df * rows[:, 1 + layout.first :] + d2f * d1[:, layout.pair_a] * d1[:, layout.pair_b])
        return torch.cat(parts, dim=1)

    return rule


def _sequential_rule(layer, rows, layout):
    for child in layer:
        rows = _apply(child, rows, layout)
    return rows


def _torch_gelu_derivatives(layer, v):
    if layer.approximate != "none":
        raise TypeError("model: nn.GELU(approximate='tanh') has no jet rule; use approximate='none' or manifoldtrain.nn.GELU")
    return GELU.derivatives(None, v)


for _t in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_jet_rule(_t, _linear_rule)
for _t in (nn.Flatten, nn.Unflatten, nn.Identity):
    register_jet_rule(_t, _shape_rule)
register_jet_rule(Affine, _affine_rule)
register_jet_rule(SmoothActivation, _activation_rule(lambda layer, v: layer.derivatives(v)))
register_jet_rule(nn.Tanh, _activation_rule(lambda layer, v: Tanh.derivatives(None, v)))
register_jet_rule(nn.Sigmoid, _activation_rule(lambda layer, v: Sigmoid.derivatives(None, v)))
register_jet_rule(nn.SiLU, _activation_rule(lambda layer, v: SiLU.derivatives(None, v)))
register_jet_rule(nn.GELU, _activation_rule(_torch_gelu_derivatives))
register_jet_rule(nn.Sequential, _sequential_rule)


def _rule_for(layer: nn.Module) -> JetRule | None:
    if callable(getattr(layer, "jet_rows", None)):
        return lambda module, rows, layout: module.jet_rows(rows, layout)
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _apply(layer: nn.Module, rows: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    rule = _rule_for(layer)
    if rule is None:  # check_jet_model ran first; this only happens for a model changed since
        check_jet_model(layer)
    return rule(layer, rows, layout)


def _unsupported(module: nn.Module, path: str) -> str | None:
    """Path of the first layer without a jet rule, or None."""
    rule = _rule_for(module)
    if rule is None:
        return path
    if rule is _sequential_rule:
        for name, child in module.named_children():
            bad = _unsupported(child, f"{path}.{name}")
            if bad is not None:
                return bad
    return None


def check_jet_model(model: nn.Module) -> nn.Module:
    """Check that the Taylor-mode pass supports every layer of ``model``; return it.

    Supported: ``nn.Sequential`` (nested too) of layers with a jet rule: ``nn.Linear``,
    ``nn.Conv1d/2d/3d``, :class:`~manifoldtrain.nn.Affine`, ``nn.Flatten``, ``nn.Unflatten``,
    ``nn.Identity``, the smooth activations of :mod:`manifoldtrain.nn` and torch's ``nn.Tanh``,
    ``nn.Sigmoid``, ``nn.SiLU``, ``nn.GELU``; any layer registered with
    :func:`register_jet_rule`; any module with a ``jet_rows(rows, layout)`` method.

    Raises
    ------
    TypeError
        Naming the first layer without a jet rule by its path (e.g. ``model.2 (ReLU)``), with
        the remedy: a smooth activation, a registered rule, or :func:`nested_jvp_rows`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    bad = _unsupported(model, "model")
    if bad is not None:
        layer = model.get_submodule(bad.removeprefix("model").lstrip(".")) if bad != "model" else model
        raise TypeError(
            f"model: layer {bad} ({type(layer).__name__}) has no jet rule. Derivative training needs "
            "twice-differentiable activations (manifoldtrain.nn: Tanh, Sigmoid, Softplus, GELU, SiLU, Sine) and "
            "linear or shape layers (Linear, Conv1d/2d/3d, Affine, Flatten, Unflatten) in nn.Sequential; register a "
            "rule for your own layer with manifoldtrain.network_jets.register_jet_rule, or choose the slower "
            "nested_jvp_rows / network_jet_nested explicitly"
        )
    return model


_ROW_NAMES = ("value", "tangents", "second")


def _leading_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The first layers of ``model`` (through nested ``nn.Sequential``) with their paths, up to
    and including the first one that is not ``Affine``, ``Identity``, ``Flatten`` or
    ``Unflatten``: those that tell which inputs the model accepts."""
    layers: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, path: str) -> bool:
        if type(module) is nn.Sequential:
            return all(walk(child, f"{path}.{name}") for name, child in module.named_children())
        layers.append((path, module))
        return isinstance(module, (Affine, nn.Identity, nn.Flatten, nn.Unflatten))

    walk(model, "model")
    return layers


def _check_model_input(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Check the sample shape of ``value`` (``[n, *shape]``) against the model's first layers.

    Known: ``Affine`` (``scale`` and ``shift`` broadcast to the sample's shape),
    ``Flatten``/``Unflatten``/``Identity`` (followed through), then the first ``Linear``
    (last dim = ``in_features``) or ``Conv1d/2d/3d`` (``[in_channels, *spatial]``); any other
    layer ends the check (the model's own errors apply).
    """
    layers = _leading_layers(model)
    shape = tuple(value.shape[1:])
    given = list(value.shape)

    def fail(path, layer, want):
        raise ValueError(
            f"{name}: expected inputs [n, {want}] for the model (its layer {path} ({type(layer).__name__}) takes "
            f"them), got {given}; pass inputs of the shape the model was built for (manifold.input_shape), or "
            "build the model for these inputs"
        )

    for path, layer in layers:
        if isinstance(layer, Affine):
            try:
                ok = torch.broadcast_shapes(shape, layer.scale.shape, layer.shift.shape) == torch.Size(shape)
            except RuntimeError:
                ok = False
            if not ok:
                big = layer.shift if layer.shift.dim() >= layer.scale.dim() else layer.scale
                fail(path, layer, ", ".join(map(str, big.shape)) or "*")
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                return
            shape = (math.prod(shape),)
        elif isinstance(layer, nn.Unflatten):
            dim, sizes = layer.dim, tuple(layer.unflattened_size)
            if not isinstance(dim, int) or dim < 1 or any(not isinstance(k, int) or k < 1 for k in sizes):
                return
            if dim > len(shape) or shape[dim - 1] != math.prod(sizes):
                fail(path, layer, f"... {math.prod(sizes)} at dim {dim} ...")
            shape = shape[: dim - 1] + sizes + shape[dim:]
        elif isinstance(layer, nn.Linear):
            if not shape or shape[-1] != layer.in_features:
                fail(path, layer, f"..., {layer.in_features}")
            return
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spatial = 1 if isinstance(layer, nn.Conv1d) else 2 if isinstance(layer, nn.Conv2d) else 3
            if len(shape) != spatial + 1 or shape[0] != layer.in_channels:
                fail(path, layer, f"{layer.in_channels}, " + ", ".join(["*"] * spatial))
            return
        elif not isinstance(layer, nn.Identity):
            return


def _check_rows(model, value, tangents, second, pairs, names=_ROW_NAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arguments of a jet-rows pass (``names``: how the caller calls them)."""
    vname, tname, sname = names
    check_tensor(vname, value, finite=False)
    if value.dim() < 1:
        raise ValueError(f"{vname}: expected a batch [n, *input_shape], got a 0-d tensor")
    n, shape = value.shape[0], tuple(value.shape[1:])
    check_tensor(tname, tangents, shape=(n, None, *shape), finite=False)
    if second is not None:
        check_tensor(sname, second, shape=(n, None, *shape), finite=False)
    for name, t in ((tname, tangents), (sname, second)):
        if t is not None and (t.dtype != value.dtype or t.device != value.device):
            raise TypeError(
                f"{name}: expected dtype {value.dtype} on {value.device} like {vname}, got {t.dtype} on {t.device}"
            )
    param = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if param is not None and (param.dtype != value.dtype or param.device != value.device):
        raise TypeError(
            f"{vname}: the model's parameters are {param.dtype} on {param.device}, the inputs {value.dtype} on "
            f"{value.device}; move one to the other (model.to(...) or jet.to(...))"
        )
    _check_model_input(model, vname, value)
    _check_finite(((vname, value), (tname, tangents), (sname, second)))
    if second is None:
        return torch.zeros(0, dtype=torch.long, device=value.device), torch.zeros(0, dtype=torch.long, device=value.device)
    if pairs is None:
        raise ValueError("pairs: second-order rows need their pairs of first-order rows ([p, 2] indices)")
    pairs = torch.as_tensor(pairs, device=value.device)
    if pairs.dtype != torch.long or pairs.shape != (second.shape[1], 2):
        raise ValueError(f"pairs: expected a long tensor [{second.shape[1]}, 2], got {pairs.dtype} {list(pairs.shape)}")
    if len(pairs) and (int(pairs.min()) < 0 or int(pairs.max()) >= tangents.shape[1]):
        raise ValueError(f"pairs: indices must lie in 0..{tangents.shape[1] - 1} (the first-order rows)")
    return pairs[:, 0], pairs[:, 1]


def _check_finite(named: tuple[tuple[str, torch.Tensor | None], ...]) -> None:
    """NaN or inf in any of the tensors is an error naming it.

    The fast path is one reduction per tensor and one synchronisation: a sum is finite when
    every entry is (NaN and inf propagate); only if it is not are the entries looked at.
    """
    tensors = [(name, t) for name, t in named if t is not None and t.numel()]
    if not tensors:
        return
    if bool(torch.isfinite(torch.stack([t.sum() for _, t in tensors])).all()):
        return
    for name, t in tensors:
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(
                f"{name}: expected finite values, found {bad} NaN or infinite entries; check the data "
                "(e.g. a damaged jet cache: regenerate it) or the preprocessing that produced them"
            )


def taylor_rows(
    model: nn.Module,
    value: torch.Tensor,
    tangents: torch.Tensor,
    second: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The network's jet rows by one Taylor-mode pass (fast path).

    Parameters
    ----------
    model : nn.Module
        Built from layers with jet rules (:func:`check_jet_model`).
    value : Tensor
        ``[n, *input_shape]``, the input :math:`x`; dtype and device of the model.
    tangents : Tensor
        ``[n, r, *input_shape]``, first-order inputs :math:`t_a`.
    second : Tensor, optional
        ``[n, p, *input_shape]``, second-order inputs :math:`t_{ab}`.
    pairs : Tensor, optional
        ``[p, 2]`` long, the pair ``(a, b)`` of each second-order row.

    Returns
    -------
    value : Tensor
        ``[n, *output_shape]``, :math:`N(x)`.
    first : Tensor
        ``[n, r, *output_shape]``, :math:`N'(x)\\, t_a`.
    second : Tensor or None
        ``[n, p, *output_shape]``, :math:`N''(x)[t_a, t_b] + N'(x)\\, t_{ab}`.

    Raises
    ------
    TypeError
        A layer without a jet rule (:func:`check_jet_model`); a non-float tensor; dtype or
        device other than the model's (its first floating-point parameter's).
    ValueError
        Shapes that disagree with each other or with the model's first layers (an
        :class:`~manifoldtrain.nn.Affine` whose ``scale``/``shift`` do not broadcast to the
        input's shape, a ``Linear`` whose ``in_features`` differ from the flattened input's
        size, a ``Conv`` with other ``in_channels``); NaN or inf in ``value``, ``tangents`` or
        ``second``; bad ``pairs``.

    Examples
    --------
    >>> from manifoldtrain.nn import Tanh
    >>> model = nn.Sequential(nn.Linear(3, 4), Tanh(), nn.Linear(4, 2)).double()
    >>> x, t, tt = torch.randn(5, 3).double(), torch.randn(5, 2, 3).double(), torch.randn(5, 1, 3).double()
    >>> pairs = torch.tensor([[0, 1]])
    >>> fast, slow = taylor_rows(model, x, t, tt, pairs), nested_jvp_rows(model, x, t, tt, pairs)
    >>> all(torch.allclose(a, b) for a, b in zip(fast, slow))
    True
    """
    return _taylor(model, value, tangents, second, pairs, _ROW_NAMES)


def _taylor(model, value, tangents, second, pairs, names):
    check_jet_model(model)
    pair_a, pair_b = _check_rows(model, value, tangents, second, pairs, names)
    parts = [value[:, None], tangents] + ([second] if second is not None else [])
    layout = RowLayout(tangents.shape[1], pair_a, pair_b)
    out = _apply(model, torch.cat(parts, dim=1), layout)
    r = tangents.shape[1]
    return out[:, 0], out[:, 1 : 1 + r], (out[:, 1 + r :] if second is not None else None)


def nested_jvp_rows(
    model: nn.Module,
    value: torch.Tensor,
    tangents: torch.Tensor,
    second: torch.Tensor | None = None,
    pairs: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same rows as :func:`taylor_rows` by nested ``torch.func.jvp`` (reference; any model).

    :math:`N'(x)\\, t_a` is one ``jvp`` per row; :math:`N''(x)[t_a, t_b] + N'(x)\\, t_{ab}` a
    ``jvp`` of a ``jvp`` plus a ``jvp``, all vectorised with ``vmap`` (``chunk_size`` rows at a
    time). Arguments and errors as :func:`taylor_rows` (the input shape is checked where the
    model's first layers tell it).
    """
    return _nested(model, value, tangents, second, pairs, _ROW_NAMES, chunk_size=chunk_size)


def _nested(model, value, tangents, second, pairs, names, *, chunk_size=None):
    pair_a, pair_b = _check_rows(model, value, tangents, second, pairs, names)
    out = model(value)

    def first(t):
        return jvp(model, (value,), (t,))[1]

    d1 = vmap(first, in_dims=1, out_dims=1, chunk_size=chunk_size)(tangents)
    if second is None:
        return out, d1, None

    def mixed(ta, tb, tab):
        inner = lambda z: jvp(model, (z,), (ta,))[1]  # noqa: E731
        return jvp(inner, (value,), (tb,))[1] + jvp(model, (value,), (tab,))[1]

    d2 = vmap(mixed, in_dims=1, out_dims=1, chunk_size=chunk_size)(tangents[:, pair_a], tangents[:, pair_b], second)
    return out, d1, d2


RowsFunction = Callable[..., tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


def _jet_by(rows_fn: RowsFunction, model: nn.Module, input_jet: Jet) -> Jet:
    if not isinstance(input_jet, Jet):
        raise TypeError(f"input_jet: expected a Jet, got {type(input_jet).__name__}")
    names = ("input_jet.value", "input_jet.d1", "input_jet.d2")
    if input_jet.order == 0:  # the value alone: a plain forward pass (after the same checks)
        empty = input_jet.value.new_zeros(len(input_jet), 0, *input_jet.shape)
        _check_rows(model, input_jet.value, empty, None, None, names)
        return Jet(model(input_jet.value))
    pairs = None
    if input_jet.order == 2:
        pairs = torch.stack(triu_pairs(input_jet.param_dim, device=input_jet.device), dim=1)
    value, d1, d2 = rows_fn(model, input_jet.value, input_jet.d1, input_jet.d2, pairs, names)
    return Jet(value, d1, d2)


def network_jet(model: nn.Module, input_jet: Jet) -> Jet:
    """The network's jet along the manifold by one Taylor-mode pass (fast path).

    Parameters
    ----------
    model : nn.Module
        Layers with jet rules (:func:`check_jet_model`); a model without them is an error
        naming the layer (use :func:`network_jet_nested` for it, explicitly).
    input_jet : Jet
        ``value [n, *input_shape]``, ``d1 [n, d, *input_shape]``, ``d2 [n, d(d+1)/2, *input_shape]``
        (order 0, 1 or 2), in the model's dtype and on its device.

    Returns
    -------
    Jet
        Of the same order: ``[n, *output_shape]``, ``[n, d, ...]``, ``[n, d(d+1)/2, ...]``.

    Raises
    ------
    TypeError
        ``input_jet`` not a :class:`~manifoldtrain.jet.Jet`; a layer without a jet rule; a
        dtype or device other than the model's.
    ValueError
        An input shape the model's first layers do not take, or NaN or inf in
        ``input_jet.value``, ``input_jet.d1`` or ``input_jet.d2`` (each named).

    Examples
    --------
    >>> from manifoldtrain.nn import Tanh
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), Tanh(), torch.nn.Linear(4, 2)).double()
    >>> x = Jet(torch.randn(5, 3).double(), torch.randn(5, 2, 3).double(), torch.randn(5, 3, 3).double())
    >>> fast, slow = network_jet(model, x), network_jet_nested(model, x)
    >>> all(torch.allclose(a, b) for a, b in zip(fast.components(), slow.components()))
    True
    """
    return _jet_by(_taylor, model, input_jet)


def network_jet_nested(model: nn.Module, input_jet: Jet) -> Jet:
    """The network's jet by nested ``torch.func.jvp`` (:func:`nested_jvp_rows`; any model).

    Arguments, result and errors as :func:`network_jet`, except that any model is accepted.
    """
    return _jet_by(_nested, model, input_jet)
