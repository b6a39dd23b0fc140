"""Batches of a :class:`~manifoldtrain.data.sources.DataSource` for the Trainer, its collaborator
for reading training data: each batch checked, truncated, scaled and moved to the model's device,
read ahead in a background thread while the current step computes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from manifoldtrain.data.sources import DataSource, check_batch
from manifoldtrain.data.statistics import LossScales
from manifoldtrain.jet import Jet

__all__ = ["SourceFeed", "ReadAhead"]


class SourceFeed:
    """Reads ``source``'s batches of jets of ``order``, scaled by ``scales``, for a model on
    ``device`` in ``dtype``; ``prefetch`` batches ahead (0: each when it is needed).

    On the CPU a batch is scaled and cast in the reading thread; for a GPU it is read into
    page-locked memory there, then copied and scaled on the device (:meth:`ready`).
    """

    def __init__(self, source: DataSource, order: int, scales: LossScales, device: torch.device, dtype: torch.dtype,
                 prefetch: int = 1):
        self.source, self.order, self.scales = source, order, scales
        self.device, self.dtype, self.prefetch = device, dtype, prefetch
        self._pin = device.type == "cuda" and torch.cuda.is_available()
        self._empty_batch: tuple[Jet, Jet] | None = None
        self._loader: ThreadPoolExecutor | None = None  # the thread that reads batches ahead

    def batch(self, indices: torch.Tensor, epoch: int) -> tuple[Jet, Jet]:
        """The batch at ``indices`` of ``epoch``, read now, ready for a step."""
        return self.ready(self.read(indices, epoch))

    def read(self, indices: torch.Tensor, epoch: int) -> tuple[Jet, Jet]:
        """The source's batch at ``indices`` of ``epoch``: checked, truncated to :attr:`order`
        and, for a model on the CPU, scaled and cast (else left on the CPU, pinned for a GPU;
        :meth:`ready` does the rest). Runs in the loader thread."""
        order = self.order
        if len(indices) == 0:  # a process without a share of a small global batch
            if self._empty_batch is None:
                x, y = self.source.batch(torch.zeros(1, dtype=torch.long), epoch, order)
                x, y = check_batch(self.source, x, y, 1, order)
                self._empty_batch = (x.truncate(order)[:0], y.truncate(order)[:0])
            x, y = self._empty_batch
        else:
            x, y = self.source.batch(indices, epoch, order)
            x, y = check_batch(self.source, x, y, len(indices), order)
            x, y = x.truncate(order), y.truncate(order)
        if self.device.type == "cpu":  # scaled here, off the training thread
            return self._scaled(x, y)
        if self._pin and x.device.type == "cpu":
            x = Jet(*(t if t.is_pinned() else t.pin_memory() for t in x.components()))
            y = Jet(*(t if t.is_pinned() else t.pin_memory() for t in y.components()))
        return x, y

    def _scaled(self, x: Jet, y: Jet) -> tuple[Jet, Jet]:
        """Scaled in the jets' own dtype (as the in-memory jets are), on the model's device, in its dtype."""
        x = self.scales.scale_jet(x.to(device=self.device, non_blocking=True)).to(dtype=self.dtype)
        y = self.scales.scale_jet(y.to(device=self.device, non_blocking=True)).to(dtype=self.dtype)
        return x, y

    def ready(self, batch: tuple[Jet, Jet]) -> tuple[Jet, Jet]:
        """A batch from :meth:`read`, ready for a step (on a GPU: copied, then scaled there)."""
        return batch if self.device.type == "cpu" else self._scaled(*batch)

    def loader(self) -> ThreadPoolExecutor:
        """The background thread that reads ahead (started when first needed)."""
        if self._loader is None:
            self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifoldtrain-loader")
        return self._loader

    def close(self) -> None:
        """Stop the background thread (a later read starts it again)."""
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
            self._loader = None

    def epoch(self, perm: torch.Tensor, epoch: int, batch_size: int, steps: int,
              shard: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ReadAhead:
        """The batches of one epoch in the order ``perm``, read ahead (:class:`ReadAhead`);
        ``shard`` picks this process's share of each global batch."""
        return ReadAhead(self, perm, epoch, batch_size, steps, shard)


class ReadAhead:
    """Reads the batches of one epoch of a :class:`SourceFeed` in its loader thread,
    ``feed.prefetch`` batches ahead of the step that uses them (0: when asked)."""

    def __init__(self, feed: SourceFeed, perm: torch.Tensor, epoch: int, batch_size: int, steps: int,
                 shard: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.feed, self.perm, self.epoch = feed, perm, epoch
        self.size, self.steps, self.shard = batch_size, steps, shard
        self.pending: dict = {}
        for b in range(min(feed.prefetch, self.steps)):
            self._submit(b)

    def _indices(self, b: int) -> torch.Tensor:
        idx = self.perm[b * self.size : (b + 1) * self.size]
        return self.shard(idx) if self.shard is not None else idx

    def _submit(self, b: int) -> None:
        self.pending[b] = self.feed.loader().submit(self.feed.read, self._indices(b), self.epoch)

    def get(self, b: int) -> tuple[Jet, Jet]:
        """Batch ``b`` of the epoch, ready for a step."""
        future = self.pending.pop(b, None)
        batch = future.result() if future is not None else self.feed.read(self._indices(b), self.epoch)
        ahead = b + self.feed.prefetch
        if self.feed.prefetch and ahead < self.steps and ahead not in self.pending:
            self._submit(ahead)
        return self.feed.ready(batch)

    def close(self) -> None:
        """Cancel the reads not started; wait for the one running (nothing reads into the next epoch)."""
        for future in self.pending.values():
            future.cancel()
        for future in self.pending.values():
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - a batch nobody will use
                    pass
        self.pending.clear()
