"""A user's own objective term, defined outside the library (imported by path in TOML tests)."""

import attrs
import torch

from manifoldtrain.objectives import Batch, Rows, Term


@attrs.frozen
class CurvaturePenalty(Term):
    """Penalise the network's mixed second derivative along ``k`` random pairs of directions."""

    weight: float = 1e-3
    directions: int = 1

    data_order = 2

    @property
    def name(self) -> str:
        return "curvature penalty"

    def request(self, batch: Batch) -> Rows:
        k = self.directions
        u, v = batch.directions(k, 0), batch.directions(k, 1)
        pairs = torch.stack([torch.arange(k), torch.arange(k, 2 * k)], dim=1)
        return Rows((batch.along(u), batch.along(v)), batch.mixed(u, v), pairs)

    def loss(self, batch: Batch, rows: Rows) -> torch.Tensor:
        return rows.out_second.pow(2).mean()

    def normaliser(self, scales) -> float:
        return scales.target_energy(2, self.name)
