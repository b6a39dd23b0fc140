"""Model selection on the validation set, the Trainer's collaborator for it: the best model so
far (kept as ``best.pt``) and early stopping."""

from __future__ import annotations

import torch

__all__ = ["BestModel"]


class BestModel:
    """The model of lowest validation ``metric`` so far, and the evaluations since it.

    Parameters
    ----------
    metric : str
        The validation number that chooses (:attr:`TrainConfig.best_metric
        <manifoldtrain.training.TrainConfig.best_metric>`).
    patience : int or None
        Stop once this many evaluations in a row have not lowered it (None: never).

    Attributes
    ----------
    best : dict or None
        ``epoch``, ``step``, ``seconds``, ``metric``, ``value``, ``validation`` (every metric)
        and ``model`` (its weights, on the CPU); None before the first evaluation.
    since_best : int
        Evaluations since the best one.
    """

    def __init__(self, metric: str, patience: int | None = None):
        self.metric = metric
        self.patience = patience
        self.best: dict | None = None
        self.since_best = 0

    @property
    def stopped_early(self) -> bool:
        """Whether ``patience`` evaluations in a row have passed without improvement."""
        return self.patience is not None and self.since_best >= self.patience

    def observe(self, validation: dict, model: torch.nn.Module, *, epoch: int, step: int, seconds: float) -> bool:
        """After an evaluation: keep ``model``'s weights if its ``validation`` numbers are the best
        so far (returns True), else count one more evaluation without improvement (False).

        Raises
        ------
        ValueError
            The metrics gave no number named :attr:`metric`, or gave None for it.
        """
        name = self.metric
        value = validation.get(name)
        if name not in validation:
            raise ValueError(f"best_metric: choosing the best model needs a validation number named {name!r}; the "
                             f"metrics gave {sorted(validation)} (set best_metric to one of them, or add a "
                             "metric that gives it, e.g. JetRMSE for 'rmse')")
        if value is None:
            raise ValueError(f"best_metric: the validation number {name!r} is None: the metric computes nothing there "
                             "(e.g. rmse_d1 or rmse_d2 on data without those derivatives); choose one it computes")
        if self.best is not None and not value < self.best["value"]:
            self.since_best += 1
            return False
        self.best = {
            "epoch": epoch, "step": step, "seconds": seconds, "metric": name, "value": value,
            "validation": dict(validation),
            "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        }
        self.since_best = 0
        return True
