"""Accuracy of a network on jets: clean RMSE and derivative RMSE (DESIGN.md's protocol)."""

from __future__ import annotations

import math

import attrs
import torch

from manifoldtrain._validation import check_int
from manifoldtrain.data import JetDataset, check_dataset
from manifoldtrain.jet import Jet
from manifoldtrain.network_jets import check_jet_model, network_jet, network_jet_nested

__all__ = ["Metrics", "evaluate"]


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
    """

    rmse: float
    rmse_d1: float | None
    rmse_d2: float | None
    n: int

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return attrs.asdict(self)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: JetDataset, *, batch_size: int = 256, order: int | None = None) -> Metrics:
    """Clean and derivative RMSE of ``model`` on ``data``.

    Network jets come from the Taylor-mode pass when the model supports it, else from
    nested ``torch.func.jvp``; batches are moved to the model's device and dtype.

    Parameters
    ----------
    model : nn.Module
    data : JetDataset
    batch_size : int
        Samples per pass.
    order : int, optional
        Highest derivative order to score (default: the data's order).
    """
    check_dataset("data", data)
    check_int("batch_size", batch_size, minimum=1)
    order = data.order if order is None else check_int("order", order, minimum=0, maximum=data.order)
    param = next(iter(model.parameters()))
    try:
        check_jet_model(model)
        jet_fn = network_jet
    except TypeError:
        jet_fn = network_jet_nested
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    try:
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            x = data.inputs[sl].truncate(order).to(device=param.device, dtype=param.dtype)
            y = data.targets[sl].truncate(order).to(device=param.device, dtype=param.dtype)
            pred = Jet(model(x.value)) if order == 0 else jet_fn(model, x)
            for k, (a, b) in enumerate(zip(pred.components(), y.components())):
                sums[k] += float((a - b).double().pow(2).sum())
                counts[k] += b.numel()
    finally:
        model.train(was_training)
    rmse = [math.sqrt(s / c) if c else None for s, c in zip(sums, counts)]
    return Metrics(rmse[0], rmse[1], rmse[2], len(data))
