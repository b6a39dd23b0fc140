"""The data layer: jets of a manifold as a data set, its caches on disk, the sources that serve
training batches, and the statistics that scale the losses.

It is a small package, each part in a module of its own, and imports nothing above it (no
objective, trainer or experiment):

* :mod:`~manifoldtrain.data.dataset`: :class:`JetDataset` in memory, :func:`generate_jets`,
  the provenance and :func:`fingerprint` of generated data;
* :mod:`~manifoldtrain.data.format`: the two on-disk formats (below) and the checks every
  reader and writer shares;
* :mod:`~manifoldtrain.data.cache`: single-file caches (:func:`save_jets`, :func:`load_jets`,
  :func:`cached_jets`);
* :mod:`~manifoldtrain.data.shards`: sharded caches (:class:`JetCache`, :func:`save_shards`,
  :func:`generate_shards`);
* :mod:`~manifoldtrain.data.sources`: the :class:`~manifoldtrain.data.sources.DataSource`
  protocol and the bundled sources (also importable from :mod:`manifoldtrain.sources`), each
  of which also builds a run's data from its config (:meth:`DataSource.experiment_data
  <manifoldtrain.data.sources.DataSource.experiment_data>`);
* :mod:`~manifoldtrain.data.statistics`: :class:`LossScales`, the statistics of the
  training data that put every loss term on one scale.

Two cache formats are read everywhere (:func:`load_jets`, :class:`JetCache`); both are a
directory whose ``meta.json`` says which it is.

Single-file caches
------------------
Written by :func:`save_jets`:

* ``meta.json``: ``{"format": "manifoldtrain-jets", "version": 1, "fingerprint": ...,
  "manifold": {"class": ..., "settings": {...}}, "n", "seed", "order", "dtype",
  "compute_dtype", "shapes": {name: [...]}}``;
* one ``.npy`` file per array: ``points``, ``input_value``, ``input_d1``, ``input_d2``,
  ``target_value``, ``target_d1``, ``target_d2`` (those up to ``order``), shapes as in
  :mod:`manifoldtrain.jet`.

It is written into a temporary directory beside its final place and renamed into place when
complete, so an interrupted write never leaves a directory that loads as complete.

Sharded caches
--------------
For data larger than memory; written by :func:`generate_shards` (``manifoldtrain generate``)
and :func:`save_shards`. The same arrays, cut into shards of ``shard_size`` consecutive
samples:

* ``meta.json``: the provenance above (``fingerprint``, ``manifold``, ``n``, ``seed``,
  ``order``, ``dtype``, ``compute_dtype``) and ``"format": "manifoldtrain-jet-shards"``,
  ``"version": 1``, ``"rows"`` (samples held), ``"shard_size"``, ``"n_shards"``,
  ``"arrays": {name: shape of one sample}`` and ``"complete": true``;
* ``shard-00000/``, ``shard-00001/``, ...: shard ``k`` holds samples
  ``k * shard_size`` up to ``min((k + 1) * shard_size, rows)``: one ``.npy`` file per array,
  ``[rows_k, *shape]``, and ``shard.json`` (``index``, ``start``, ``rows``, ``fingerprint``).

Each shard is written into a temporary folder (``.shard-00000.tmp-*``), its files flushed to
disk, then renamed into place: a shard folder under its final name is complete, and an
interrupted shard never reads as complete. A generation in progress lives beside its target,
in ``.NAME.partial/`` (with ``"complete": false``), and is renamed to ``NAME`` once every
shard is there; running the same generation again continues it, keeping the finished shards
(:func:`generate_shards`). Readers (:class:`JetCache`) check every file's header and size
when they open a cache (a truncated file is named in the error) and read only the rows
asked for, with positional reads into the output: nothing maps or loads the whole set.

The *fingerprint* is a SHA-256 of canonical JSON of the manifold's class and settings (its
attrs fields, or its public attributes; tensor-valued settings by a hash of their content),
``n``, ``seed``, ``order`` and the dtypes: a cache is reused only when all of them match. It
identifies the data, not the layout: a sharded and a single-file cache of the same
generation have the same fingerprint.
"""


from manifoldtrain.data.cache import cached_jets, load_jets, save_jets
from manifoldtrain.data.dataset import (JetDataset, check_cache_matches, check_dataset, fingerprint, generate_jets,
                                        split_index,
                                        manifold_description)
from manifoldtrain.data.format import (DEFAULT_SHARD_SIZE, FORMAT, FORMAT_VERSION, SHARD_META, SHARDS_FORMAT, SHARDS_VERSION,
                                       check_cache_target, is_jet_cache, shard_name)
from manifoldtrain.data.shards import JetCache, ShardReport, generate_shards, save_shards
from manifoldtrain.data.statistics import LossScales, streamed_scales

__all__ = ["JetDataset", "generate_jets", "split_index", "load_jets", "save_jets", "cached_jets", "fingerprint", "is_jet_cache",
           "check_cache_target", "JetCache", "generate_shards", "save_shards", "ShardReport", "DEFAULT_SHARD_SIZE",
           "check_dataset", "check_cache_matches", "manifold_description", "LossScales", "streamed_scales", "shard_name", "FORMAT",
           "FORMAT_VERSION", "SHARDS_FORMAT", "SHARDS_VERSION", "SHARD_META"]
