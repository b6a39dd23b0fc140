"""A data source of your own: jets stored by another program, trained on without editing the library.

Your jets may come from elsewhere (a simulation, a measurement campaign, a renderer in
another language), stored your way. Here: one ``.npy`` file per jet component in a folder,
``inputs_value.npy``, ``inputs_d1.npy``, ..., ``targets_d2.npy``. ``NpyFolderSource``
implements the :class:`~manifoldtrain.sources.DataSource` protocol for them (the four
required members: ``__len__``, ``order``, ``batch`` and ``description``): the files are
memory-mapped and each batch copies only its own rows. The Trainer reads it exactly as it
reads the bundled sources (loss scales by a chunked pass, a validation set held out,
batches read ahead in a background thread), and a ``from_config`` classmethod makes it
selectable in a TOML config too::

    [data]
    source = "custom_data_source:NpyFolderSource"   # this file, importable
    path = "my-jets"

The script writes such a folder from cube jets, then trains the same network from it and
from the same jets in memory: the weights agree to the last bit.

Run: ``python examples/custom_data_source.py [--quick]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from manifoldtrain import Jet
from manifoldtrain.data import generate_jets
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import Objective
from manifoldtrain.sources import DataSource
from manifoldtrain.training import Trainer, TrainConfig

COMPONENTS = ("value", "d1", "d2")


class NpyFolderSource(DataSource):
    """Jets stored as ``{inputs,targets}_{value,d1,d2}.npy`` in one folder, shapes as in
    :mod:`manifoldtrain.jet` (``[n, ...]``, ``[n, d, ...]``, ``[n, d(d+1)/2, ...]``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._order = max(k for k, c in enumerate(COMPONENTS) if (self.folder / f"inputs_{c}.npy").is_file())
        # Memory maps: nothing is read until a batch asks for its rows.
        self.arrays = {f"{side}_{c}": np.load(self.folder / f"{side}_{c}.npy", mmap_mode="r")
                       for side in ("inputs", "targets") for c in COMPONENTS[: self._order + 1]}

    def __len__(self) -> int:
        return len(self.arrays["inputs_value"])

    @property
    def order(self) -> int:
        return self._order

    def batch(self, indices, epoch, order=None):
        order = self._order if order is None else min(order, self._order)
        rows = indices.numpy()
        jets = []
        for side in ("inputs", "targets"):
            jets.append(Jet(*(torch.from_numpy(np.ascontiguousarray(self.arrays[f"{side}_{c}"][rows]))
                              for c in COMPONENTS[: order + 1])))
        return jets[0], jets[1]

    def description(self) -> dict:
        return {"kind": "npy-folder", "folder": str(self.folder.resolve()), "n": len(self), "order": self._order}

    @classmethod
    def from_config(cls, config, *, order, dtype):
        """``[data] source = "custom_data_source:NpyFolderSource"`` reads the folder ``data.path``."""
        source = cls(config.data.path)
        if source.order < order:
            raise ValueError(f"data.path: {config.data.path} holds jets of order {source.order}, the run needs {order}")
        return source


def write_folder(data, folder: Path) -> None:
    """Store a JetDataset the way 'another program' would."""
    folder.mkdir(parents=True, exist_ok=True)
    for side, jet in (("inputs", data.inputs), ("targets", data.targets)):
        for c, t in zip(COMPONENTS, jet.components()):
            np.save(folder / f"{side}_{c}.npy", t.numpy())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    if args.quick:
        cube, n, hidden, epochs = Cube(image_size=9), 48, (16,), 2
    else:
        cube, n, hidden, epochs = Cube(image_size=21), 512, (64, 64), 5

    data = generate_jets(cube, n, seed=0, dtype=torch.float64, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(data, Path(tmp) / "jets")
        source = NpyFolderSource(Path(tmp) / "jets")
        weights = []
        for train in (data, source):  # the same data, in memory and from our source
            model = build_model(MLPConfig(hidden=hidden), data.inputs.value, data.targets.value, seed=0)
            config = TrainConfig(epochs=epochs, batch_size=16, validation=0.25, progress=False)
            history = Trainer(model, Objective.second_order(), train, config=config).fit()
            weights.append(model.state_dict())
            last = history.records[-1]
            print(f"{type(train).__name__:>16}: {last['epoch']} epochs, training loss {last['loss']:.4e}, "
                  f"validation RMSE {last['validation']['rmse']:.4e}")
        same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        print("the same weights from memory and from NpyFolderSource:", same)
        if not same:
            raise SystemExit("the weights differ")


if __name__ == "__main__":
    main()
