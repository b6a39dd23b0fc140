"""Training data as a *source* of batches: in memory, read from a sharded cache, or computed on the fly.

The :class:`~manifoldtrain.training.Trainer` asks its training data for one batch at a time
through :class:`DataSource`, a small public protocol. Three sources come with the library:

* :class:`InMemorySource`: a :class:`~manifoldtrain.data.JetDataset` in memory (what a
  ``JetDataset`` passed to the Trainer is; the Trainer keeps its fast path for it: the jets
  are scaled once and put on the model's device);
* :class:`ShardedCacheSource`: a jet cache on disk (:class:`~manifoldtrain.data.JetCache`,
  sharded or single-file) of any size, of which each batch reads only its own rows;
* :class:`OnTheFlySource`: computes each batch's jets with :meth:`Manifold.jets
  <manifoldtrain.manifold.Manifold.jets>` when it is asked for, at new points every epoch
  (``mode="fresh"``: effectively unlimited data) or from a fixed pool of points
  (``mode="pool"``: a data set that is never stored).

A source of your own subclasses :class:`DataSource` and trains through the same Trainer
(``examples/custom_data_source.py``); with a :meth:`DataSource.from_config` classmethod it is
also selectable in a TOML config (``[data] source = "package.module:ClassName"``).

Determinism: a batch is a function of its sample indices and the epoch only, so the batch
order (drawn by the Trainer), resumption, and training on several processes (each asks for
its own share of every global batch) work alike for every source. The Trainer reads the next
batch in a background thread while the current step computes (:class:`DataSource.batch` is
never called twice at once).
"""

from __future__ import annotations

import abc
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import torch

from manifoldtrain._plain import digest, plain
from manifoldtrain._validation import check_int, check_tensor, dtype_name
from manifoldtrain.data.cache import cached_jets, load_jets
from manifoldtrain.data.dataset import (JetDataset, check_cache_matches, fingerprint, generate_jets, manifold_description,
                                        provenance)
from manifoldtrain.data.format import renamed
from manifoldtrain.data.shards import JetCache, generate_shards
from manifoldtrain.data.statistics import LossScales, streamed_scales  # re-export: streamed_scales was public here
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold

T = TypeVar("T")

__all__ = ["DataSource", "DataRequest", "computed_test_set", "InMemorySource", "ShardedCacheSource", "OnTheFlySource",
           "SubsetSource",
           "streamed_scales", "MODES"]

#: The modes of :class:`OnTheFlySource`.
MODES = ("fresh", "pool")


def _call(fn: Callable[[], T]) -> T:
    return fn()


@attrs.frozen
class DataRequest:
    """What a run asks of its data: how :meth:`DataSource.experiment_data` builds ``(train, test)``.

    Attributes
    ----------
    order : int
        The jet order to generate (and cache): the objective's, or ``data.test_order`` if higher.
    train_order : int
        The order the objective trains on (:attr:`Objective.max_order
        <manifoldtrain.objectives.Objective.max_order>`): a source serves batches of it.
    dtype, compute_dtype : torch.dtype
        The dtype the jets are stored in, and the one they are computed in
        (``data.dtype``, ``data.compute_dtype``).
    progress : bool
        Show progress bars while jets are computed.
    write_cache : bool
        Write a missing cache (False: generate the jets but write nothing; the processes of a
        distributed run other than rank 0: one writer per cache).
    run_on_main : callable
        ``run_on_main(fn)`` runs ``fn()`` once for all processes (rank 0 of a distributed run,
        the others wait) and returns its result; default: calls it.
    device : torch.device, optional
        The training device (where jets computed on the fly are computed); None: the CPU.
    """

    order: int
    train_order: int
    dtype: torch.dtype
    compute_dtype: torch.dtype
    progress: bool = True
    write_cache: bool = True
    run_on_main: Callable = _call
    device: torch.device | None = None


class DataSource(abc.ABC):
    """Training jets, served one batch at a time: the protocol between data and the Trainer.

    **Must** be provided by a subclass:

    * :meth:`__len__` -- the samples of one epoch (the Trainer draws a permutation of
      ``range(len(source))`` every epoch and cuts it into batches);
    * :attr:`order` -- the highest jet order held (0, 1 or 2);
    * :meth:`batch` -- the jets of the samples at some indices in some epoch;
    * :meth:`description` -- what the data are, as JSON-able data (its digest is the
      :attr:`fingerprint` that checkpoints record and that the processes of a distributed
      run compare).

    **May** be overridden (the defaults are written with the four above):

    * :meth:`statistics` -- the :class:`~manifoldtrain.data.statistics.LossScales` of the
      training data (default: an exact, chunked pass over every sample of epoch 0);
    * :meth:`hold_out` -- a validation set (default: ``n`` samples chosen by ``seed``, kept
      in memory, and a :class:`SubsetSource` of the others);
    * :meth:`points` -- the manifold points of samples (default: None, not known);
    * :attr:`unlimited` -- whether every epoch brings new samples (default False);
    * :attr:`fingerprint`, :attr:`input_shape`, :attr:`target_shape`, :attr:`param_dim`,
      :attr:`dtype` (default: from :meth:`description` and one sample);
    * :meth:`from_config` -- make the source from an
      :class:`~manifoldtrain.config.ExperimentConfig`, to select it in TOML;
    * :meth:`experiment_data` -- a run's ``(train, test)`` from its config (default: the
      test set computed from the manifold, the training source from :meth:`from_config`).
      The bundled sources build theirs here too: a run asks every source alike.
    """

    # ------------------------------------------------------------------ the protocol

    @abc.abstractmethod
    def __len__(self) -> int:
        """Samples per epoch (the batch indices run over ``range(len(self))``)."""

    @property
    @abc.abstractmethod
    def order(self) -> int:
        """The highest jet order :meth:`batch` can give (0, 1 or 2)."""

    @abc.abstractmethod
    def batch(self, indices: torch.Tensor, epoch: int, order: int | None = None) -> tuple[Jet, Jet]:
        """The jets of the samples at ``indices`` in epoch ``epoch``, unscaled.

        Must be deterministic (the same arguments give the same jets, on every process) and
        may run in a background thread (never two calls at once).

        Parameters
        ----------
        indices : Tensor
            ``[b]`` long, in ``[0, len(self))``, any order.
        epoch : int
            0-based; a source whose samples do not change between epochs ignores it.
        order : int, optional
            The highest order needed (default :attr:`order`): a source may skip reading or
            computing higher orders (it may also return them; the Trainer truncates).

        Returns
        -------
        inputs, targets : Jet
            ``value [b, *input_shape]``, ``d1 [b, d, ...]``, ``d2 [b, d(d+1)/2, ...]`` (and
            the same for the targets), float32 or float64, on the CPU (or already on the
            model's device).
        """

    @abc.abstractmethod
    def description(self) -> dict:
        """What the data are (kind, manifold, size, seeds, ...) as JSON-able data: equal
        descriptions mean the same samples."""

    # ------------------------------------------------------------------ defaults

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :meth:`description`: stored in checkpoints (a resumed run must have the
        same) and compared between the processes of a distributed run."""
        return digest(self.description())

    @property
    def unlimited(self) -> bool:
        """Whether every epoch has samples of its own (the data never repeat). Default False."""
        return False

    def points(self, indices: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """The manifold points ``[b, *point_shape]`` of the samples at ``indices``, or None if
        the source does not know them (the default)."""
        return None

    def _probe(self) -> tuple[Jet, Jet]:
        x, y = self.batch(torch.zeros(1, dtype=torch.long), 0, min(self.order, 1))
        return check_batch(self, x, y, 1, min(self.order, 1))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input value (default: from one sample)."""
        return self._probe()[0].shape

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one target value (default: from one sample)."""
        return self._probe()[1].shape

    @property
    def param_dim(self) -> int | None:
        """The number of local coordinates ``d`` (None for value-only data; default: from one sample)."""
        return self._probe()[0].param_dim if self.order >= 1 else None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the jets (default: from one sample)."""
        return self._probe()[0].dtype

    def statistics(self, *, chunk_size: int = 256) -> LossScales:
        """The loss scales of the training data, without holding it in memory.

        The default reads every sample of epoch 0, ``chunk_size`` at a time, twice (the
        per-coordinate scales and the means first, then the energies): exactly
        :meth:`LossScales.from_data <manifoldtrain.data.statistics.LossScales.from_data>` of the
        whole set, to the last bit (:func:`streamed_scales`). Sources with unlimited or
        costly data override it (e.g. :class:`OnTheFlySource`: a fixed calibration sample).
        """
        check_int("chunk_size", chunk_size, minimum=1)
        return streamed_scales(lambda sl, order: self.batch(torch.arange(sl.start, sl.stop), 0, order),
                               len(self), self.order, chunk_size=chunk_size, name=f"{type(self).__name__}.batch")

    def load(self, indices: torch.Tensor, epoch: int = 0, *, order: int | None = None,
             chunk_size: int = 256) -> JetDataset:
        """The samples at ``indices`` of epoch ``epoch`` in memory, as a :class:`JetDataset`
        (points from :meth:`points`, or ``[b, 0]`` placeholders where unknown)."""
        indices = _check_indices(self, indices)
        order = self.order if order is None else check_int("order", order, minimum=0, maximum=self.order)
        xs, ys = [], []
        for part in indices.split(chunk_size):
            x, y = self.batch(part, epoch, order)
            x, y = check_batch(self, x, y, len(part), order)
            xs.append(x.truncate(order).to("cpu"))
            ys.append(y.truncate(order).to("cpu"))
        inputs = Jet(*(torch.cat(c) for c in zip(*(x.components() for x in xs))))
        targets = Jet(*(torch.cat(c) for c in zip(*(y.components() for y in ys))))
        points = self.points(indices, epoch)
        if points is None:
            points = torch.zeros(len(indices), 0, dtype=inputs.dtype)
        return JetDataset(points.to("cpu"), inputs, targets, {"fingerprint": self.fingerprint,
                                                              "source": self.description()})

    def hold_out(self, n: int, seed: int) -> tuple[DataSource, JetDataset]:
        """``(rest, held)``: ``n`` samples held out as a validation set (in memory), and a
        source of the others to train on.

        The default draws the held-out samples as :meth:`JetDataset.split
        <manifoldtrain.data.JetDataset.split>` does (a permutation from
        ``torch.Generator().manual_seed(seed)``, both parts in increasing order), so that a
        source and the same data in memory hold out the same samples. A source with
        :attr:`unlimited` data must override it (there is no fixed set to hold out from).
        """
        check_int("n", n, minimum=1, maximum=len(self) - 1)
        check_int("seed", seed, minimum=0)
        if self.unlimited:
            raise ValueError(f"n: {type(self).__name__} draws new samples every epoch, so none can be held out of its "
                             "training data; override DataSource.hold_out to give a validation set (in a Trainer: "
                             "or set config.validation = 0)")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held, rest = perm[:n].sort().values, perm[n:].sort().values
        return SubsetSource(self, rest), self.load(held)

    @classmethod
    def from_config(cls, config, *, order: int, dtype: torch.dtype) -> DataSource:
        """The training source of an :class:`~manifoldtrain.config.ExperimentConfig` whose
        ``data.source`` names this class (``"package.module:ClassName"``), of at least
        ``order`` and in ``dtype``. The test set is drawn as for ``source = "on-the-fly"``
        (the test part of ``n_train + n_test`` points drawn with ``data.seed``, split by
        ``data.split_seed``). Not implemented by default."""
        raise TypeError(f"data.source: {cls.__module__}:{cls.__qualname__} has no classmethod from_config(config, *, "
                        "order, dtype); implement it to select the source in a TOML config, or pass the source to the "
                        "Trainer directly")

    @classmethod
    def experiment_data(cls, config, request: DataRequest) -> tuple[JetDataset | DataSource, JetDataset]:
        """The training and test data of a run whose ``data.source`` names this class:
        ``(train, test)``, ``train`` a source (or, for the data in memory, a
        :class:`JetDataset`) and ``test`` a :class:`JetDataset`.

        What :func:`~manifoldtrain.experiment.make_data` calls, for every source alike. The
        default computes the test set (the test part of ``n_train + n_test`` points drawn
        with ``data.seed``, split by ``data.split_seed``, as for ``source = "on-the-fly"``)
        and makes the training source with :meth:`from_config`.

        Parameters
        ----------
        config : ExperimentConfig
        request : DataRequest
            The orders, dtypes and the process's part in writing caches.
        """
        _, _, test = computed_test_set(config, request)
        train = cls.from_config(config, order=request.train_order, dtype=request.dtype)
        if not isinstance(train, DataSource):
            raise TypeError(f"data.source: {config.data.source}.from_config must return a DataSource, got "
                            f"{type(train).__name__}")
        return train, test

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples of order {self.order})"


def _check_indices(source: DataSource, indices) -> torch.Tensor:
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.is_floating_point():
        raise TypeError("indices: expected a 1-D integer tensor" + (
            f", got shape {list(indices.shape)} {indices.dtype}" if isinstance(indices, torch.Tensor)
            else f", got {type(indices).__name__}"))
    indices = indices.to("cpu", torch.long)
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(source)):
        raise IndexError(f"indices: expected sample indices in [0, {len(source)}), got values from "
                         f"{int(indices.min())} to {int(indices.max())}")
    return indices


def check_batch(source: DataSource, x: object, y: object, n: int, order: int) -> tuple[Jet, Jet]:
    """What :meth:`DataSource.batch` returned, checked: two Jets of ``n`` samples, of at least ``order``."""
    name = f"{type(source).__name__}.batch"
    if not isinstance(x, Jet) or not isinstance(y, Jet):
        raise TypeError(f"train: {name} must return (inputs, targets) as two Jets, got "
                        f"({type(x).__name__}, {type(y).__name__})")
    if len(x) != n or len(y) != n:
        raise ValueError(f"train: {name} returned {len(x)} inputs and {len(y)} targets for {n} indices")
    if x.order < order or y.order < order:
        raise ValueError(f"train: {name} returned jets of order {min(x.order, y.order)}, asked for order {order}")
    return x, y


# ---------------------------------------------------------------------------- sources


class SubsetSource(DataSource):
    """The samples ``indices`` of another source, in that order: ``batch(i, epoch)`` is
    ``source.batch(indices[i], epoch)``. What :meth:`DataSource.hold_out` trains on.

    Parameters
    ----------
    source : DataSource
    indices : Tensor
        ``[m]`` long, in ``[0, len(source))``.
    """

    def __init__(self, source: DataSource, indices: torch.Tensor):
        if not isinstance(source, DataSource):
            raise TypeError(f"source: expected a DataSource, got {type(source).__name__}")
        self.source = source
        self.indices = _check_indices(source, indices)
        if not len(self.indices):
            raise ValueError("indices: expected at least one sample")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def order(self) -> int:
        return self.source.order

    @property
    def unlimited(self) -> bool:
        return self.source.unlimited

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the whole source (a subset of a data set keeps its fingerprint,
        as :meth:`JetDataset.subset <manifoldtrain.data.JetDataset.subset>` keeps its meta)."""
        return self.source.fingerprint

    def batch(self, indices: torch.Tensor, epoch: int, order: int | None = None) -> tuple[Jet, Jet]:
        return self.source.batch(self.indices[_check_indices(self, indices)], epoch, order)

    def points(self, indices: torch.Tensor, epoch: int) -> torch.Tensor | None:
        return self.source.points(self.indices[_check_indices(self, indices)], epoch)

    def description(self) -> dict:
        return {"kind": "subset", "of": self.source.description(), "indices": plain(self.indices)}

    @property
    def input_shape(self):
        return self.source.input_shape

    @property
    def target_shape(self):
        return self.source.target_shape

    @property
    def param_dim(self):
        return self.source.param_dim

    @property
    def dtype(self):
        return self.source.dtype


class InMemorySource(DataSource):
    """A :class:`~manifoldtrain.data.JetDataset` in memory as a source.

    The Trainer treats it as the ``JetDataset`` itself (given either, it scales the jets once
    and gathers every batch from them on the model's device); its methods serve everyone
    else, and it is the reference the other sources are compared with.

    Parameters
    ----------
    dataset : JetDataset
    """

    def __init__(self, dataset: JetDataset):
        if not isinstance(dataset, JetDataset):
            raise TypeError(f"dataset: expected a JetDataset, got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def order(self) -> int:
        return self.dataset.order

    @property
    def fingerprint(self) -> str | None:
        """The data set's own fingerprint (``meta["fingerprint"]``; None if it has none)."""
        return self.dataset.meta.get("fingerprint")

    def batch(self, indices: torch.Tensor, epoch: int, order: int | None = None) -> tuple[Jet, Jet]:
        idx = _check_indices(self, indices).to(self.dataset.points.device)
        order = self.order if order is None else order
        return self.dataset.inputs.truncate(order)[idx], self.dataset.targets.truncate(order)[idx]

    def points(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.dataset.points[_check_indices(self, indices).to(self.dataset.points.device)]

    def description(self) -> dict:
        return {"kind": "memory", "fingerprint": self.fingerprint, "n": len(self)}

    def statistics(self, *, chunk_size: int = 256) -> LossScales:
        return LossScales.from_data(self.dataset.inputs, self.dataset.targets, chunk_size=chunk_size)

    def hold_out(self, n: int, seed: int) -> tuple[DataSource, JetDataset]:
        check_int("n", n, minimum=1, maximum=len(self) - 1)
        rest, held = self.dataset.split(n, seed)
        return InMemorySource(rest), held

    @property
    def input_shape(self):
        return self.dataset.inputs.shape

    @property
    def target_shape(self):
        return self.dataset.targets.shape

    @property
    def param_dim(self):
        return self.dataset.inputs.param_dim

    @property
    def dtype(self):
        return self.dataset.inputs.dtype

    @classmethod
    def experiment_data(cls, config, request: DataRequest) -> tuple[JetDataset, JetDataset]:
        """``source = "memory"`` (the default): both sets as :class:`JetDataset` in memory, read
        from ``data.path``, from (or into) the cache in ``data.cache_dir``, or generated."""
        d = config.data
        n = d.n_train + d.n_test
        order, dtype, compute = request.order, request.dtype, request.compute_dtype
        if d.path is not None:
            try:
                data = load_jets(d.path)
            except (FileNotFoundError, ValueError) as err:
                raise renamed(err, "data.path") from None
            _check_cache_fits(data, config, request, "data.path", d.path)
            data = data.subset(slice(0, n))
            data = JetDataset(data.points, data.inputs.truncate(order), data.targets.truncate(order), data.meta)
        elif d.cache_dir is not None and not request.write_cache:
            key = fingerprint(config.manifold, n, d.seed, order, dtype, compute)
            if (Path(d.cache_dir) / key / "meta.json").is_file():  # complete: caches are renamed into place
                data = load_jets(Path(d.cache_dir) / key, expected_fingerprint=key)
            else:
                data = generate_jets(config.manifold, n, seed=d.seed, order=order, dtype=dtype, compute_dtype=compute,
                                     progress=request.progress)
        elif d.cache_dir is not None:
            data = cached_jets(config.manifold, n, d.cache_dir, seed=d.seed, order=order, dtype=dtype,
                               compute_dtype=compute, progress=request.progress)
        else:
            data = generate_jets(config.manifold, n, seed=d.seed, order=order, dtype=dtype, compute_dtype=compute,
                                 progress=request.progress)
        return data.split(d.n_test, d.split_seed)



class ShardedCacheSource(DataSource):
    """A jet cache on disk as a source: each batch reads only its own rows (and only the jet
    components up to the order asked for), so the cache may be far larger than memory.

    Reads go through :class:`~manifoldtrain.data.JetCache` (positional reads into the batch's
    tensors; the operating system's page cache keeps what was read recently, outside the
    process). The loss scales (:meth:`statistics`) are one exact pass over the cache (read
    twice, chunk by chunk), equal to those of the same data in memory.

    Parameters
    ----------
    cache : path or JetCache
        A sharded cache (``manifoldtrain generate``) or a single-file one (:func:`~manifoldtrain.data.save_jets`).
    order : int, optional
        Serve jets up to this order only (default: the cache's).
    expected_fingerprint : str, optional
        Refuse a cache of another fingerprint.
    pin_memory : bool
        Read batches into page-locked memory, for fast asynchronous copies to a GPU (the
        Trainer pins batches itself otherwise).
    """

    def __init__(self, cache: str | os.PathLike | JetCache, *, order: int | None = None,
                 expected_fingerprint: str | None = None, pin_memory: bool = False):
        if not isinstance(cache, JetCache):
            if not isinstance(cache, (str, os.PathLike)):
                raise TypeError(f"cache: expected a folder path or a JetCache, got {type(cache).__name__}")
            cache = JetCache(cache, expected_fingerprint=expected_fingerprint)
        elif expected_fingerprint is not None and cache.fingerprint != expected_fingerprint:
            raise ValueError(f"cache: the cache at {cache.path} was made with other settings (fingerprint differs)")
        self.cache = cache
        self._order = cache.order if order is None else check_int("order", order, minimum=0, maximum=cache.order)
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory: page-locked memory is for copies to a CUDA device, and CUDA is not available "
                             "here; pass pin_memory=False")
        self.pin_memory = bool(pin_memory)

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def order(self) -> int:
        return self._order

    @property
    def meta(self) -> dict:
        """The cache's provenance (manifold, seed, fingerprint, ...)."""
        return self.cache.meta

    @property
    def fingerprint(self) -> str:
        """The cache's fingerprint (the same as its data's in memory: a run may resume across sources)."""
        return self.cache.fingerprint or digest(self.description())

    def batch(self, indices: torch.Tensor, epoch: int, order: int | None = None) -> tuple[Jet, Jet]:
        order = self._order if order is None else min(order, self._order)
        return self.cache.jets(_check_indices(self, indices), order, pin_memory=self.pin_memory)

    def points(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.cache.points(_check_indices(self, indices))

    def description(self) -> dict:
        return {"kind": "jet-cache", "fingerprint": self.cache.fingerprint, "n": len(self), "order": self._order,
                **({} if self.cache.fingerprint else {"path": str(Path(self.cache.path).resolve())})}

    @property
    def input_shape(self):
        return self.cache.shapes["input_value"]

    @property
    def target_shape(self):
        return self.cache.shapes["target_value"]

    @property
    def param_dim(self):
        return self.cache.shapes["input_d1"][0] if self._order >= 1 else None

    @property
    def dtype(self):
        return self.cache.dtype

    def __repr__(self) -> str:
        return f"ShardedCacheSource({self.cache!r}, order={self._order})"


# ---------------------------------------------------------------------------- a run's data

    @classmethod
    def experiment_data(cls, config, request: DataRequest) -> tuple[DataSource, JetDataset]:
        """``source = "shards"``: the training samples read from a cache batch by batch (``data.path``,
        or the cache in ``data.cache_dir``, generated there by ``request.run_on_main`` if missing),
        the test samples in memory."""
        d = config.data
        n = d.n_train + d.n_test
        order, dtype, compute = request.order, request.dtype, request.compute_dtype
        if d.path is not None:
            path, argument = Path(d.path), "data.path"
        elif d.cache_dir is not None:
            key = fingerprint(config.manifold, n, d.seed, order, dtype, compute)
            path, argument = Path(d.cache_dir) / key, "data.cache_dir"

            def make() -> None:
                try:
                    JetCache(path, expected_fingerprint=key).close()  # complete and intact: nothing to do
                except (FileNotFoundError, ValueError):
                    generate_shards(config.manifold, n, path, seed=d.seed, order=order, dtype=dtype,
                                    compute_dtype=compute, progress=request.progress)

            request.run_on_main(make)
        else:
            raise ValueError("data.source: 'shards' reads a jet cache batch by batch; set data.path to a cache written "
                             "by `manifoldtrain generate` (or train --data), or data.cache_dir to have one generated "
                             "there")
        try:
            cache = JetCache(path, name=argument)  # its later read errors (damage found while training) name it too
        except (FileNotFoundError, ValueError) as err:
            raise renamed(err, argument) from None
        _check_cache_fits(cache, config, request, argument, path)
        train_idx, test_idx = split_indices(n, d.n_test, d.split_seed)
        test = cache.load(test_idx, order=order)
        train = SubsetSource(cls(cache, order=request.train_order), train_idx)
        return train, test



def split_indices(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices of :meth:`JetDataset.split <manifoldtrain.data.JetDataset.split>`."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _check_compute_dtype(meta: dict, compute_dtype: str, argument: str, path) -> None:
    """A cache's jets were computed in the dtype that the run's config says (``data.compute_dtype``
    describes the run's data, and its config.toml records it)."""
    cached = meta.get("compute_dtype")
    if cached is not None and cached != compute_dtype:
        raise ValueError(f"data.compute_dtype: the jets of {path} ({argument}) were computed in {cached}, "
                         f"data.compute_dtype is {compute_dtype!r}; set it to {cached!r} to train on this cache")


def _check_cache_fits(cache: JetDataset | JetCache, config, request: DataRequest, argument: str, path) -> None:
    """A cache that a run reads holds what the run needs: jets of its manifold, of its order,
    enough samples, in its dtypes."""
    d = config.data
    check_cache_matches(cache, config.manifold, argument, path)
    order = cache.inputs.order if isinstance(cache, JetDataset) else cache.order
    if order < request.order:
        raise ValueError(f"{argument}: {path} holds jets of order {order}; this run needs order {request.order} "
                         "(generate it with a higher --order)")
    n = d.n_train + d.n_test
    if len(cache) < n:
        raise ValueError(f"{argument}: {path} holds {len(cache)} samples; n_train + n_test = {n}")
    dtype = cache.inputs.dtype if isinstance(cache, JetDataset) else cache.dtype
    if dtype != request.dtype:
        raise ValueError(f"{argument}: {path} is stored in {dtype}, data.dtype is {d.dtype!r}")
    _check_compute_dtype(cache.meta, d.compute_dtype, argument, path)


def computed_test_set(config, request: DataRequest) -> tuple[torch.Tensor, torch.Tensor, JetDataset]:
    """The points of a run whose training jets are computed (on the fly, or by a source of
    one's own) and its test set, computed now on the CPU: ``(points, train_indices, test)``.
    The points are those of ``source = "memory"`` (``n_train + n_test`` drawn with
    ``data.seed``), split by ``data.split_seed``."""
    from tqdm.auto import tqdm

    d, manifold = config.data, config.manifold
    order, dtype, compute = request.order, request.dtype, request.compute_dtype
    n = d.n_train + d.n_test
    points = manifold.sample(n, torch.Generator().manual_seed(d.seed), dtype=torch.float64)
    train_idx, test_idx = split_indices(n, d.n_test, d.split_seed)
    xs, ys = [], []
    with tqdm(total=d.n_test, desc="test jets", unit="sample", disable=not request.progress, leave=False) as bar:
        for chunk in points[test_idx].split(256):
            x, y = manifold.jets(chunk.to(compute), order)
            xs.append(x.to(dtype))
            ys.append(y.to(dtype))
            bar.update(len(chunk))
    meta = {**provenance(manifold, n, d.seed, order, dtype, compute),
            "fingerprint": fingerprint(manifold, n, d.seed, order, dtype, compute)}
    test = JetDataset(points[test_idx].to(dtype), Jet(*(torch.cat(c) for c in zip(*(x.components() for x in xs)))),
                      Jet(*(torch.cat(c) for c in zip(*(y.components() for y in ys)))), meta)
    return points, train_idx, test


def _derived_seed(tag: str, *numbers: int) -> int:
    text = ":".join([f"manifoldtrain-{tag}", *map(str, numbers)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


class OnTheFlySource(DataSource):
    """Computes each batch's jets when asked, with :meth:`Manifold.jets <manifoldtrain.manifold.Manifold.jets>`:
    data that are never stored.

    Two modes:

    * ``"fresh"``: every epoch has ``n`` points of its own, drawn with
      ``manifold.sample(n, torch.Generator().manual_seed(s))`` for a seed ``s`` derived from
      ``(seed, epoch)`` (by SHA-256; the same on every process, so the processes of a
      distributed run share one global batch, and a resumed run draws what it would have
      drawn): effectively unlimited data. No sample is seen twice.
    * ``"pool"``: a fixed pool of points (``points``, or ``n`` drawn with ``seed`` as
      :func:`~manifoldtrain.data.generate_jets` draws them), each rendered anew whenever a batch
      holds it, the same way every time: a data set of any size without its jets in memory
      or on disk, paid for in computation every epoch.

    Jets are computed in ``compute_dtype`` (on ``device``, in chunks of ``chunk_size``) and
    returned in ``dtype`` on the CPU. The loss scales (:meth:`statistics`) come from a fixed
    calibration sample: the first ``calibration`` samples of epoch 0 (a seeded draw;
    identical on every process). A validation set (:meth:`hold_out`) is, in mode
    ``"fresh"``, ``n`` points of a draw of their own (never trained on); in mode
    ``"pool"``, samples held out of the pool.

    Parameters
    ----------
    manifold : Manifold
    n : int, optional
        Samples per epoch (``"fresh"``) or the size of the pool; not needed with ``points``.
    mode : str
        ``"fresh"`` (default) or ``"pool"``.
    seed : int
        Seeds the points (default 0).
    order : int
        Jet order (default 2).
    dtype, compute_dtype : torch.dtype
        Storage and computation precision (defaults float32 and float64).
    calibration : int
        Samples of the calibration sample (default 512).
    points : Tensor, optional
        The pool ``[n, *point_shape]`` (mode ``"pool"`` only; default: drawn with ``seed``).
    chunk_size : int
        Points per call of ``manifold.jets`` (default 256).
    device : torch.device or str, optional
        Where the jets are computed (default: the CPU).
    """

    def __init__(self, manifold: Manifold, n: int | None = None, *, mode: str = "fresh", seed: int = 0, order: int = 2,
                 dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype = torch.float64,
                 calibration: int = 512, points: torch.Tensor | None = None, chunk_size: int = 256,
                 device: torch.device | str | None = None):
        check_is_manifold("manifold", manifold)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        check_int("seed", seed, minimum=0)
        check_int("order", order, minimum=0, maximum=2)
        check_int("calibration", calibration, minimum=1)
        check_int("chunk_size", chunk_size, minimum=1)
        dtype_name("dtype", dtype)
        dtype_name("compute_dtype", compute_dtype)
        if points is not None:
            if mode != "pool":
                raise ValueError(f"points: a given set of points is a pool; pass mode='pool' (got mode={mode!r})")
            check_tensor("points", points)
            if n is not None and n != len(points):
                raise ValueError(f"n: expected the number of points, {len(points)}, or None, got {n}")
            n = len(points)
        check_int("n", n, minimum=1)
        self.manifold = manifold
        self.n, self.mode, self.seed, self._order = n, mode, seed, order
        self._dtype, self.compute_dtype = dtype, compute_dtype
        self.calibration, self.chunk_size = calibration, chunk_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._given_points = points is not None
        if mode == "pool":
            self._pool = (points.to(compute_dtype) if points is not None else
                          manifold.sample(n, torch.Generator().manual_seed(seed), dtype=compute_dtype))
        else:
            self._pool = None
        self._drawn: tuple[int, torch.Tensor] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    @property
    def order(self) -> int:
        return self._order

    @property
    def unlimited(self) -> bool:
        """True in mode ``"fresh"``."""
        return self.mode == "fresh"

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def epoch_points(self, epoch: int) -> torch.Tensor:
        """The ``n`` points of epoch ``epoch`` (in ``compute_dtype``): the pool, or that epoch's draw."""
        check_int("epoch", epoch, minimum=0)
        if self._pool is not None:
            return self._pool
        with self._lock:
            if self._drawn is None or self._drawn[0] != epoch:
                generator = torch.Generator().manual_seed(_derived_seed("fresh", self.seed, epoch))
                self._drawn = (epoch, self.manifold.sample(self.n, generator, dtype=self.compute_dtype))
            return self._drawn[1]

    def _render(self, points: torch.Tensor, order: int) -> tuple[Jet, Jet]:
        xs, ys = [], []
        for chunk in points.split(self.chunk_size):
            x, y = self.manifold.jets(chunk.to(self.device), order)
            xs.append(x.to(device="cpu", dtype=self._dtype))
            ys.append(y.to(device="cpu", dtype=self._dtype))
        if len(xs) == 1:
            return xs[0], ys[0]
        return (Jet(*(torch.cat(c) for c in zip(*(x.components() for x in xs)))),
                Jet(*(torch.cat(c) for c in zip(*(y.components() for y in ys)))))

    def batch(self, indices: torch.Tensor, epoch: int, order: int | None = None) -> tuple[Jet, Jet]:
        order = self._order if order is None else min(check_int("order", order, minimum=0, maximum=2), self._order)
        return self._render(self.epoch_points(epoch)[_check_indices(self, indices)], order)

    def points(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.epoch_points(epoch)[_check_indices(self, indices)].to(self._dtype)

    def description(self) -> dict:
        out = {"kind": "on-the-fly", "mode": self.mode, "manifold": manifold_description(self.manifold), "n": self.n,
               "seed": self.seed, "order": self._order, "dtype": dtype_name("dtype", self._dtype),
               "compute_dtype": dtype_name("compute_dtype", self.compute_dtype), "calibration": self.calibration}
        if self._given_points:
            out["points"] = plain(self._pool)
        return out

    def statistics(self, *, chunk_size: int = 256) -> LossScales:
        """The loss scales of the calibration sample (the first ``calibration`` samples of
        epoch 0), each computed once and kept while the statistics are taken."""
        check_int("chunk_size", chunk_size, minimum=1)
        m = min(self.calibration, len(self))
        rendered = {}

        def read(sl: slice, order: int) -> tuple[Jet, Jet]:
            if sl.start not in rendered:
                rendered[sl.start] = self.batch(torch.arange(sl.start, sl.stop), 0, self._order)
            return rendered[sl.start]

        return streamed_scales(read, m, self._order, chunk_size=chunk_size, name=f"{type(self).__name__}.batch")

    def hold_out(self, n: int, seed: int) -> tuple[DataSource, JetDataset]:
        """Mode ``"pool"``: as :meth:`DataSource.hold_out` (samples of the pool). Mode
        ``"fresh"``: ``n`` points of a draw of their own (seeded by ``seed`` and the source's
        seed), rendered now; the source itself trains on (its points are never these)."""
        if self.mode == "pool":
            return super().hold_out(n, seed)
        check_int("n", n, minimum=1)
        check_int("seed", seed, minimum=0)
        generator = torch.Generator().manual_seed(_derived_seed("validation", self.seed, seed))
        points = self.manifold.sample(n, generator, dtype=self.compute_dtype)
        x, y = self._render(points, self._order)
        return self, JetDataset(points.to(self._dtype), x, y, {"fingerprint": self.fingerprint,
                                                                 "source": {**self.description(), "validation": seed}})

    @property
    def input_shape(self):
        return tuple(self.manifold.input_shape) if hasattr(self.manifold, "input_shape") else super().input_shape

    @property
    def target_shape(self):
        return tuple(self.manifold.target_shape) if hasattr(self.manifold, "target_shape") else super().target_shape

    @property
    def param_dim(self):
        return self.manifold.param_dim if self._order >= 1 else None

    def __repr__(self) -> str:
        return (f"OnTheFlySource({self.manifold!r}, n={self.n}, mode={self.mode!r}, seed={self.seed}, "
                f"order={self._order})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        state["_drawn"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def experiment_data(cls, config, request: DataRequest) -> tuple[DataSource, JetDataset]:
        """``source = "on-the-fly"``: the training jets computed batch by batch on
        ``request.device`` (new points every epoch, or ``mode = "pool"``: the training part of
        the points of ``source = "memory"``), the test set computed now, on the CPU."""
        d = config.data
        if d.path is not None:  # before the test set is computed
            raise ValueError("data.path: source = 'on-the-fly' computes its jets and reads no cache; remove data.path "
                             "(or train --data), or use source = \"shards\" to train from the cache")
        if d.cache_dir is not None:
            raise ValueError("data.cache_dir: source = 'on-the-fly' computes its jets and stores none; remove "
                             "data.cache_dir, or use source = \"shards\" to have a cache generated there")
        points, train_idx, test = computed_test_set(config, request)
        calibration = d.calibration if d.calibration is not None else 512
        common = dict(seed=d.seed, order=request.train_order, dtype=request.dtype, compute_dtype=request.compute_dtype,
                      calibration=calibration, device=request.device)
        if (d.mode or "fresh") == "pool":
            return cls(config.manifold, mode="pool", points=points[train_idx], **common), test
        return cls(config.manifold, d.n_train, mode="fresh", **common), test


