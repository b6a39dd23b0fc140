"""Accuracy of a network on jets (DESIGN.md's protocol), and metrics for the Trainer.

A *metric* is any callable ``metric(model, data) -> dict[str, float | None]``: a function of
the model and the test data returning named numbers. The :class:`~manifoldtrain.training.Trainer`
takes a sequence of them, records their numbers in the history (``record["test"]``), the
results and the learning-curve figures. :class:`JetRMSE` (clean and derivative RMSE) is the
default; subclass :class:`Metric` or pass a plain function for your own.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import attrs
import torch

from manifoldtrain._validation import check_int, check_names
from manifoldtrain.data import JetDataset, check_dataset
from manifoldtrain.jet import Jet
from manifoldtrain.network_jets import check_jet_model, network_jet

__all__ = ["Metrics", "evaluate", "Metric", "JetRMSE", "check_metric_values"]


@attrs.frozen
class Metrics:
    """Test accuracy, in the units of the manifold's coordinates and targets.

    Attributes
    ----------
    rmse : float
        Root mean square of :math:`N(x) - y` over samples and outputs (clean RMSE).
    rmse_d1 : float or None
        The same for :math:`N'(x) x_i - y_i` over samples, coordinates and outputs.
    rmse_d2 : float or None
        The same for :math:`N''(x)[x_i, x_j] + N'(x) x_{ij} - y_{ij}` over samples, the
        ``d(d+1)/2`` pairs and outputs.
    n : int
        Number of samples.
    jet : str
        Which function computed the network's jets (``"network_jet"``: Taylor mode;
        ``"network_jet_nested"``: nested ``torch.func.jvp``; ``"forward"`` for values only).
    per_output : dict or None
        Each target output by name (:attr:`Manifold.target_names
        <manifoldtrain.manifold.Manifold.target_names>`, default ``y0, y1, ...``):
        ``{"rmse": ..., "std": ..., "relative_rmse": ...}``, the clean RMSE of that output, the
        standard deviation of its test targets (their spread: predicting their mean scores an
        RMSE of ``std``), and ``rmse / std`` (``None`` where ``std`` is 0). ``None`` for metrics
        built without it.
    """

    rmse: float
    rmse_d1: float | None
    rmse_d2: float | None
    n: int
    jet: str = "network_jet"
    per_output: dict[str, dict[str, float | None]] | None = None

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return attrs.asdict(self)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: JetDataset,
    *,
    batch_size: int = 256,
    order: int | None = None,
    jet_fn: Callable[[torch.nn.Module, Jet], Jet] = network_jet,
    output_names: Sequence[str] | None = None,
) -> Metrics:
    """Clean and derivative RMSE of ``model`` on ``data``, and the clean RMSE of each output.

    Batches are moved to the model's device and dtype.

    Parameters
    ----------
    model : nn.Module
    data : JetDataset
    batch_size : int
        Samples per pass.
    order : int, optional
        Highest derivative order to score (default: the data's order). Order 0 needs only
        the model's forward pass.
    jet_fn : callable
        How the network's jets are computed: :func:`~manifoldtrain.network_jets.network_jet`
        (Taylor mode, the default; a model without jet rules is an error naming the layer) or
        :func:`~manifoldtrain.network_jets.network_jet_nested` (any model, slower), chosen
        explicitly. :attr:`Metrics.jet` says which ran.
    output_names : sequence of str, optional
        Names of the target's outputs (row-major over ``target_shape``) for
        :attr:`Metrics.per_output`; default ``y0, y1, ...``. A manifold's are
        :func:`manifoldtrain.manifold.target_names`.
    """
    check_dataset("data", data)
    check_int("batch_size", batch_size, minimum=1)
    n_outputs = math.prod(data.targets.shape)
    names = tuple(f"y{i}" for i in range(n_outputs)) if output_names is None else check_names(
        "output_names", output_names, n_outputs)
    order = data.order if order is None else check_int("order", order, minimum=0, maximum=data.order)
    param = next(iter(model.parameters()))
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    per_output = torch.zeros(n_outputs, dtype=torch.float64)
    try:
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            x = data.inputs[sl].truncate(order).to(device=param.device, dtype=param.dtype)
            y = data.targets[sl].truncate(order).to(device=param.device, dtype=param.dtype)
            pred = Jet(model(x.value)) if order == 0 else jet_fn(model, x)
            for k, (a, b) in enumerate(zip(pred.components(), y.components())):
                squares = (a - b).double().pow(2)
                sums[k] += float(squares.sum())
                counts[k] += b.numel()
                if k == 0:
                    per_output += squares.reshape(len(b), n_outputs).sum(0).cpu()
    finally:
        model.train(was_training)
    rmse = [math.sqrt(s / c) if c else None for s, c in zip(sums, counts)]
    return Metrics(rmse[0], rmse[1], rmse[2], len(data), "forward" if order == 0 else jet_fn.__name__,
                   _per_output(names, per_output, data.targets.value))


def _per_output(names: tuple[str, ...], squares: torch.Tensor, targets: torch.Tensor) -> dict:
    """:attr:`Metrics.per_output` from the summed squared errors of each output and the targets."""
    n = len(targets)
    if n == 0:
        return {name: {"rmse": None, "std": None, "relative_rmse": None} for name in names}
    rmse = (squares / n).sqrt()
    std = targets.detach().to("cpu", torch.float64).reshape(n, -1).std(0, correction=0)
    return {name: {"rmse": float(r), "std": float(s), "relative_rmse": float(r / s) if s > 0 else None}
            for name, r, s in zip(names, rmse, std)}


class Metric(abc.ABC):
    """A named measurement of a model on test data, for the Trainer.

    Subclasses implement :meth:`__call__`, returning ``{name: number}`` (``None`` for a number
    that does not apply); the names must be unique among a Trainer's metrics. A plain
    function ``(model, data) -> dict`` works the same way.
    """

    @abc.abstractmethod
    def __call__(self, model: torch.nn.Module, data: JetDataset) -> dict[str, float | None]:
        """The metric's numbers for ``model`` on ``data``."""

    def check(self, model: torch.nn.Module, data: JetDataset) -> None:
        """Raise early (when the Trainer is built) if the metric cannot score ``model`` on
        ``data``; the default accepts everything."""


@attrs.frozen
class JetRMSE(Metric):
    """Clean and derivative RMSE (:func:`evaluate`): ``rmse``, ``rmse_d1``, ``rmse_d2``.

    Attributes
    ----------
    order : int or None
        Highest order scored (default: the test data's).
    jet_fn : callable
        :func:`~manifoldtrain.network_jets.network_jet` (default) or
        :func:`~manifoldtrain.network_jets.network_jet_nested`.
    batch_size : int
    """

    order: int | None = None
    jet_fn: Callable = network_jet
    batch_size: int = 256

    def check(self, model: torch.nn.Module, data: JetDataset) -> None:
        if self.jet_fn is network_jet and (data.order if self.order is None else self.order) >= 1:
            check_jet_model(model)

    def __call__(self, model: torch.nn.Module, data: JetDataset) -> dict[str, float | None]:
        m = evaluate(model, data, batch_size=self.batch_size, order=self.order, jet_fn=self.jet_fn)
        return {"rmse": m.rmse, "rmse_d1": m.rmse_d1, "rmse_d2": m.rmse_d2}


def check_metric_values(metric: object, values: object) -> dict[str, float | None]:
    """Check what a metric returned: a dict from str to a real number or None."""
    name = getattr(metric, "__name__", type(metric).__name__)
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise TypeError(f"metrics: {name} must return a dict from names to numbers, got {type(values).__name__}")
    out = {}
    for k, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TypeError(f"metrics: {name} returned {type(v).__name__} for {k!r}; expected a number or None")
        out[k] = None if v is None else float(v)
    return out
