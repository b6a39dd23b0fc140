"""Networks for derivative training: smooth activations, normalisation, MLPs and a small conv net.

Every layer here has a *jet rule* (:mod:`manifoldtrain.network_jets`): how value, first and
second derivative rows pass through it. Linear layers (``nn.Linear``, ``nn.Conv1d``,
``nn.Conv2d``, :class:`Affine`) act on every row and add their bias to the value row only;
shape layers (``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity``) act on every row; smooth
activations (subclasses of :class:`SmoothActivation`) apply

.. math:: \\sigma(v), \\qquad \\sigma'(v)\\, v_i, \\qquad \\sigma''(v)\\, v_i v_j + \\sigma'(v)\\, v_{ij}.

Derivative training needs twice-differentiable activations (the loss of an order-``k``
objective involves :math:`\\sigma^{(k)}`, its gradient :math:`\\sigma^{(k+1)}`): use
:class:`Tanh`, :class:`Sigmoid`, :class:`Softplus`, :class:`GELU`, :class:`SiLU` or
:class:`Sine`, all infinitely differentiable. ``nn.ReLU``, ``nn.ELU``, ``nn.LeakyReLU`` and
other activations without a jet rule are fine for value training but are rejected for
derivative training with an error naming them.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence

import attrs
import torch
from torch import nn

from manifoldtrain._registry import Registry
from manifoldtrain._validation import check_int, check_tensor

__all__ = [
    "SmoothActivation",
    "Tanh",
    "Sigmoid",
    "Softplus",
    "GELU",
    "SiLU",
    "Sine",
    "SMOOTH_ACTIVATIONS",
    "ACTIVATIONS",
    "Affine",
    "ModelConfig",
    "MLPConfig",
    "ConvNetConfig",
    "check_model_config",
    "build_model",
]


class SmoothActivation(nn.Module):
    """An elementwise activation with closed-form first and second derivatives.

    Subclasses implement :meth:`derivatives`, returning :math:`(\\sigma, \\sigma', \\sigma'')`
    at ``v``; ``forward`` is the first of them (override it with a faster form of the same
    function if there is one). The Taylor pass of derivative training uses the closed forms:
    check them with :func:`manifoldtrain.testing.check_activation`. A model config names one by
    ``"package.module:ClassName"`` (``MLPConfig(activation=...)``, ``activation = ...`` in the
    ``[model]`` table), or by a short name registered in
    :data:`~manifoldtrain.registry.ACTIVATIONS`.
    """

    def derivatives(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.derivatives(v)[0]


class Tanh(SmoothActivation):
    """:math:`\\tanh v`; :math:`\\sigma' = 1 - \\sigma^2`, :math:`\\sigma'' = -2\\sigma\\sigma'`."""

    def derivatives(self, v):
        t = torch.tanh(v)
        d = 1 - t * t
        return t, d, -2 * t * d

    def forward(self, v):
        return torch.tanh(v)


class Sigmoid(SmoothActivation):
    """Logistic :math:`\\sigma(v)`; :math:`\\sigma' = \\sigma(1-\\sigma)`, :math:`\\sigma'' = \\sigma'(1 - 2\\sigma)`."""

    def derivatives(self, v):
        s = torch.sigmoid(v)
        d = s * (1 - s)
        return s, d, d * (1 - 2 * s)

    def forward(self, v):
        return torch.sigmoid(v)


class Softplus(SmoothActivation):
    """:math:`\\log(1 + e^v)`; derivatives the logistic function and its derivative."""

    def derivatives(self, v):
        s = torch.sigmoid(v)
        return nn.functional.softplus(v), s, s * (1 - s)

    def forward(self, v):
        return nn.functional.softplus(v)


class GELU(SmoothActivation):
    """Exact GELU :math:`v \\Phi(v)`; :math:`\\sigma' = \\Phi + v\\varphi`, :math:`\\sigma'' = \\varphi (2 - v^2)`."""

    def derivatives(self, v):
        phi = torch.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(v / math.sqrt(2)))
        return v * cdf, cdf + v * phi, phi * (2 - v * v)

    def forward(self, v):
        return nn.functional.gelu(v)


class SiLU(SmoothActivation):
    """SiLU (swish) :math:`v \\sigma(v)`."""

    def derivatives(self, v):
        s = torch.sigmoid(v)
        ds = s * (1 - s)
        return v * s, s + v * ds, ds * (2 + v * (1 - 2 * s))

    def forward(self, v):
        return nn.functional.silu(v)


class Sine(SmoothActivation):
    """:math:`\\sin v` (SIREN-style)."""

    def derivatives(self, v):
        s = torch.sin(v)
        return s, torch.cos(v), -s

    def forward(self, v):
        return torch.sin(v)


#: The bundled smooth activations by name. Configs look names up in :data:`ACTIVATIONS`
#: (also :data:`manifoldtrain.registry.ACTIVATIONS`), which holds these (register one of your own there).
SMOOTH_ACTIVATIONS = {"tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus, "gelu": GELU, "silu": SiLU, "sine": Sine}

#: Smooth activations by name, for ``activation = ...`` of the bundled model configs:
#: ``tanh``, ``sigmoid``, ``softplus``, ``gelu``, ``silu``, ``sine`` (:data:`SMOOTH_ACTIVATIONS`),
#: or ``"package.module:ClassName"`` of any :class:`SmoothActivation` subclass
#: (built without arguments).
ACTIVATIONS = Registry("activation", SmoothActivation)
for _name, _cls in SMOOTH_ACTIVATIONS.items():
    ACTIVATIONS.register(_name, _cls)


class Affine(nn.Module):
    """Fixed elementwise affine map ``x * scale + shift`` (buffers, not trained).

    Used for input normalisation (``scale = 1/std``, ``shift = -mean/std``) and for putting
    outputs back in target units. ``scale`` and ``shift`` broadcast against one sample.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale).clone())
        self.register_buffer("shift", torch.as_tensor(shift).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    @classmethod
    def normalizing(cls, data: torch.Tensor, *, per_feature: bool = False, eps: float = 1e-8) -> Affine:
        """The map to zero mean (per feature) and unit standard deviation (global or per feature).

        ``data`` is ``[n, *shape]``.
        """
        mean = data.mean(0)
        std = data.std(0) if per_feature else data.std()
        std = std.clamp_min(eps)
        return cls(1.0 / std, -mean / std)

    @classmethod
    def denormalizing(cls, data: torch.Tensor, *, eps: float = 1e-8) -> Affine:
        """The inverse of :meth:`normalizing` with per-feature statistics: outputs in data units."""
        mean, std = data.mean(0), data.std(0).clamp_min(eps)
        return cls(std, mean)


def _activation_class(activation: str) -> type[SmoothActivation]:
    """The class named ``activation`` in :data:`ACTIVATIONS` (a short name
    or ``"package.module:ClassName"`` of a :class:`SmoothActivation` subclass)."""
    try:
        cls = ACTIVATIONS.get(activation)
    except (TypeError, ValueError) as err:
        raise type(err)(f"activation: {str(err).removeprefix('kind: ')}") from None
    if cls.derivatives is SmoothActivation.derivatives:
        raise TypeError(f"activation: {activation!r} does not implement derivatives(v) -> (f, f', f''); "
                        "name a SmoothActivation subclass that does")
    verify_activation(cls, f"activation: {activation!r}")
    return cls


#: Activation classes of users that passed :func:`verify_activation` (checked once per process).
_VERIFIED_ACTIVATIONS: set[type] = set()


def verify_activation(cls: type, where: str) -> None:
    """Check a user's :class:`SmoothActivation` class once, on load: built without arguments, its
    closed-form :meth:`~SmoothActivation.derivatives` must agree with its ``forward`` and that
    function's finite differences (:func:`manifoldtrain.testing.check_activation`, 97 points on
    ``[-6, 6]``, a few milliseconds). A wrong derivative would train every network on wrong
    targets without an error, so it is refused: ``ValueError`` starting with ``where``. The
    bundled activations (:data:`SMOOTH_ACTIVATIONS`) are tested with the library and skipped."""
    if cls in SMOOTH_ACTIVATIONS.values() or cls in _VERIFIED_ACTIVATIONS:
        return
    from manifoldtrain.testing import check_activation

    try:
        instance = cls()
    except Exception as err:  # noqa: BLE001 - the user's class: say what it raised
        raise TypeError(f"{where}: cannot be built without arguments ({type(err).__name__}: {err})") from None
    try:
        report = check_activation(instance, raise_on_failure=False)
    except Exception as err:  # noqa: BLE001 - a derivatives() of the wrong form, or one that raises
        raise ValueError(f"{where}: its derivatives(v) fail the check of manifoldtrain.testing.check_activation "
                         f"({type(err).__name__}: {err})") from None
    if not report.passed:
        wrong = "; ".join(f"{item.name.replace('derivatives.', '')} off by {item.max_error:.3g} (largest "
                          f"{item.scale:.3g})" for item in report.items if not item.passed)
        labels = {"value": "f", "d1": "f'", "d2": "f''"}
        for key, label in labels.items():
            wrong = wrong.replace(f"{key} off", f"{label} off")
        raise ValueError(f"{where}: its closed-form derivatives(v) disagree with its forward and that function's "
                         f"finite differences on [-6, 6]: {wrong}; derivative training would fit wrong targets. "
                         "Fix derivatives(v) (manifoldtrain.testing.check_activation shows the comparison)")
    _VERIFIED_ACTIVATIONS.add(cls)


def _check_activation(instance, attribute, value):
    _activation_class(value)


def _as_tuple(value):
    """Sequences (a TOML array, a list, a range) become tuples; anything else (``8``, a string)
    is left as it is for the validator to name."""
    return tuple(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else value


#: The widest layer a bundled model config takes (``hidden``, ``channels``): 2^24, beyond any
#: memory's worth of weights; a larger width would be allocated before failing.
MAX_WIDTH = 2**24


def check_hidden(instance, attribute, value):
    """attrs validator of a network's layer sizes (``hidden``, ``channels``): a non-empty tuple of
    positive ints up to :data:`MAX_WIDTH`, named by the attribute in the error."""
    def positive_int(h):
        return isinstance(h, int) and not isinstance(h, bool) and h > 0

    if not isinstance(value, tuple) or not value or not all(positive_int(h) for h in value):
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"{attribute.name}: expected a non-empty list of positive ints, got {shown!r}")
    if max(value) > MAX_WIDTH:
        raise ValueError(f"{attribute.name}: expected widths <= {MAX_WIDTH}, got {max(value)}")


class ModelConfig(abc.ABC):
    """The settings of a network: what :func:`build_model` builds, and what a config's
    ``[model]`` table names (``kind = "mlp"``, ``"convnet"``, or ``"package.module:Class"``).

    Implementing a new model
    ------------------------
    Subclass it as a frozen attrs class whose fields are the settings (so that it is saved in
    a run's ``config.toml`` and checkpoint and rebuilt from them), and implement
    :meth:`layers`. That is all that must be written: :func:`build_model` puts the layers
    between the input normalisation and the output denormalisation, draws their weights
    with the run's ``model_seed`` and moves them to the data's dtype and device. For
    derivative training every layer needs a jet rule (the layers of :mod:`torch.nn` listed in
    :mod:`manifoldtrain.nn`, any :class:`SmoothActivation`, or one registered with
    :func:`~manifoldtrain.network_jets.register_jet_rule`); a layer without one is named
    when training starts. ``examples/custom_model.py`` shows one.
    """

    @abc.abstractmethod
    def layers(self, input_shape: tuple[int, ...], n_outputs: int) -> Sequence[nn.Module]:
        """The network's layers, in order, from inputs ``[n, *input_shape]`` (normalised:
        zero mean, unit standard deviation) to outputs ``[n, n_outputs]`` (in normalised
        target units); new modules at every call, their weights drawn from torch's global
        generator (which :func:`build_model` seeds)."""


@attrs.frozen
class MLPConfig(ModelConfig):
    """A multilayer perceptron on the flattened input.

    Attributes
    ----------
    hidden : tuple of int
        Widths of the hidden layers (default ``(512, 512, 512)``).
    activation : str
        A name of :data:`~manifoldtrain.registry.ACTIVATIONS` (those of
        :data:`SMOOTH_ACTIVATIONS`; default ``"tanh"``) or ``"package.module:ClassName"`` of a
        :class:`SmoothActivation` of your own, built without arguments.
    """

    hidden: tuple[int, ...] = attrs.field(default=(512, 512, 512), converter=_as_tuple, validator=check_hidden)
    activation: str = attrs.field(default="tanh", validator=_check_activation)

    def layers(self, input_shape: tuple[int, ...], n_outputs: int) -> list[nn.Module]:
        act = _activation_class(self.activation)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in self.hidden:
            layers += [nn.Linear(width, size), act()]
            width = size
        return [*layers, nn.Linear(width, n_outputs)]


@attrs.frozen
class ConvNetConfig(ModelConfig):
    """A small conv net for image inputs ``[H, W]`` or ``[C, H, W]`` (``C`` channels, e.g. frames
    of a movie): two strided convolutions, then an MLP head.

    Attributes
    ----------
    channels : tuple of int
        Output channels of the two 3x3 convolutions, each with stride 2 (default ``(16, 32)``).
    hidden : tuple of int
        Widths of the dense hidden layers after flattening (default ``(256,)``).
    activation : str
        A name of :data:`~manifoldtrain.registry.ACTIVATIONS` (those of
        :data:`SMOOTH_ACTIVATIONS`, default ``"tanh"``) or ``"package.module:ClassName"`` of a
        :class:`SmoothActivation` of your own, built without arguments.
    """

    channels: tuple[int, ...] = attrs.field(default=(16, 32), converter=_as_tuple, validator=check_hidden)
    hidden: tuple[int, ...] = attrs.field(default=(256,), converter=_as_tuple, validator=check_hidden)
    activation: str = attrs.field(default="tanh", validator=_check_activation)

    def layers(self, input_shape: tuple[int, ...], n_outputs: int) -> list[nn.Module]:
        if len(input_shape) not in (2, 3):
            raise ValueError("inputs: a ConvNetConfig needs images [n, H, W] or [n, C, H, W], got "
                             f"[n, {', '.join(map(str, input_shape))}]")
        act = _activation_class(self.activation)
        if len(input_shape) == 2:  # one channel
            layers: list[nn.Module] = [nn.Unflatten(1, (1, input_shape[0]))]
            c_in, h, w = 1, *input_shape
        else:
            layers = []
            c_in, h, w = input_shape
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), act()]
            c_in, h, w = c, (h + 1) // 2, (w + 1) // 2
        layers.append(nn.Flatten())
        width = c_in * h * w
        for size in self.hidden:
            layers += [nn.Linear(width, size), act()]
            width = size
        return [*layers, nn.Linear(width, n_outputs)]


def check_model_config(name: str, value: object) -> None:
    """``value`` is a :class:`ModelConfig`; ``name`` is the argument."""
    if not isinstance(value, ModelConfig):
        raise TypeError(f"{name}: expected a ModelConfig (MLPConfig, ConvNetConfig or a subclass of your own), got "
                        f"{type(value).__name__}")


def build_model(
    config: ModelConfig,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int = 0,
) -> nn.Sequential:
    """Build a network for inputs like ``inputs`` ``[n, *input_shape]`` and targets ``[n, m]``.

    The layers are ``config``'s (:meth:`ModelConfig.layers`), between two fixed maps: the
    first normalises inputs with statistics of ``inputs`` (per-feature mean, one global
    standard deviation: background pixels with no variance stay finite); the last puts
    outputs in the units of ``targets`` (per-output mean and standard deviation). Weights are
    drawn with ``seed``; the model has the dtype and device of ``inputs``.
    """
    check_model_config("config", config)
    check_tensor("inputs", inputs)
    check_tensor("targets", targets, shape=(inputs.shape[0], None))
    check_int("seed", seed, minimum=0)
    if inputs.shape[0] < 2:
        raise ValueError(f"inputs: expected at least 2 samples for the normalisation statistics, got {inputs.shape[0]}")
    in_shape, n_out = tuple(inputs.shape[1:]), targets.shape[1]
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        layers = list(config.layers(in_shape, n_out))
        bad = [type(layer).__name__ for layer in layers if not isinstance(layer, nn.Module)]
        if bad:
            raise TypeError(f"config: {type(config).__name__}.layers returned {', '.join(bad)}; expected nn.Modules")
        for module in (m for layer in layers for m in layer.modules()):
            if isinstance(module, SmoothActivation):
                verify_activation(type(module), f"config: {type(config).__name__}'s activation {type(module).__name__}")
        model = nn.Sequential(Affine.normalizing(inputs), *layers, Affine.denormalizing(targets))
    model = model.to(dtype=inputs.dtype, device=inputs.device)
    _check_built(model, config, inputs, in_shape, n_out)
    return model


def _check_built(model: nn.Sequential, config: ModelConfig, inputs: torch.Tensor, in_shape: tuple, n_out: int) -> None:
    """Run two samples through the layers (eval mode, no gradients): they must take inputs
    ``[n, *in_shape]`` and give ``[n, n_out]``. Without this a network of one output would
    broadcast against the output map of ``n_out`` targets and train without an error."""
    what = f"{type(config).__name__}.layers(input_shape={in_shape}, n_outputs={n_out})"
    was_training = model.training
    model.eval()  # batch-norm statistics stay as they are
    try:
        with torch.no_grad():
            out = model[:-1](inputs[:2])
    except RuntimeError as err:
        raise ValueError(f"config: the network that {what} built cannot take inputs [n, {', '.join(map(str, in_shape))}] "
                         f"({str(err).splitlines()[0]}); build its first layer for input_shape") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (inputs[:2].shape[0], n_out):
        got = list(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"config: the network that {what} built gives outputs {got} per sample; expected [{n_out}] "
                         "(one per target coordinate: end with a layer of n_outputs outputs)")
