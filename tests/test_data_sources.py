"""Data sources: the sharded cache (format, resumable generation in processes, damage, memory),
jets computed on the fly, the TOML selection, a user's own source, training from each (one
process and two)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from manifoldtrain import Jet
from manifoldtrain.config import config_from_dict, config_to_dict, load_config, save_config
from manifoldtrain.data import (JetCache, JetDataset, generate_jets, generate_shards, load_jets, save_jets, save_shards,
                                shard_name)
from manifoldtrain.experiment import make_data, run_experiment
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import LossScales, Objective
from manifoldtrain.sources import DataSource, InMemorySource, OnTheFlySource, ShardedCacheSource, SubsetSource
from manifoldtrain.training import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint

from config_helpers import cube_toml
from source_helpers import DyingSphere, overwrite
from toy_manifolds import Sphere

SMALL = Cube(image_size=9, extent=0.5, sigma=0.08)
NAMES = ("points", "input_value", "input_d1", "input_d2", "target_value", "target_d1", "target_d2")


@pytest.fixture(scope="module")
def cube64():
    """30 order-2 cube samples in float64, computed in chunks of 8 (as shards of 8 are)."""
    return generate_jets(SMALL, 30, seed=1, dtype=torch.float64, batch_size=8, progress=False)


def _arrays(data: JetDataset) -> dict:
    return dict(zip(NAMES, (data.points, *data.inputs.components(), *data.targets.components())))


def _assert_same_data(a: JetDataset, b: JetDataset) -> None:
    for name, (x, y) in zip(NAMES, zip(_arrays(a).values(), _arrays(b).values())):
        assert torch.equal(x, y), name
    assert a.meta == b.meta


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_one_side_of_a_split_rendered_alone_is_that_side_of_the_whole(cube64):
    """generate_jets(index=) against the obvious path: render all, then subset; also at a
    higher order than the rest of the data, the use it exists for (accuracy.py's value-only
    runs keep an order-2 test set)."""
    from manifoldtrain.data import split_index

    train, test = cube64.split(12, seed=4)
    train_index, test_index = split_index(30, 12, seed=4)
    assert sorted(train_index.tolist() + test_index.tolist()) == list(range(30))
    alone = generate_jets(SMALL, 30, seed=1, dtype=torch.float64, progress=False, index=test_index)
    assert alone.meta == test.meta and torch.equal(alone.points, test.points)
    for name, x in _arrays(test).items():
        torch.testing.assert_close(_arrays(alone)[name], x, rtol=1e-12, atol=1e-12, msg=name)
    low = generate_jets(SMALL, 30, seed=1, dtype=torch.float64, order=0, progress=False).split(12, seed=4)[0]
    torch.testing.assert_close(low.targets.value, train.targets.value, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"index: expected entries in \[0, 30\)"):
        generate_jets(SMALL, 30, index=torch.tensor([30]), progress=False)
    with pytest.raises(TypeError, match="index: expected dtype int64"):
        generate_jets(SMALL, 30, index=torch.tensor([1.0]), progress=False)


# ----------------------------------------------------------------- the sharded cache


def test_a_sharded_cache_holds_the_data_of_memory(cube64, tmp_path):
    report = generate_shards(SMALL, 30, tmp_path / "jets", seed=1, dtype=torch.float64, shard_size=8, batch_size=8,
                             progress=False)
    assert (report.n, report.n_shards, report.written, report.kept) == (30, 4, (0, 1, 2, 3), ())
    assert report.fingerprint == cube64.meta["fingerprint"]  # the data's identity, not the layout's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets"]  # nothing left beside it
    assert sorted(p.name for p in (tmp_path / "jets").iterdir()) == ["meta.json", *(shard_name(k) for k in range(4))]
    _assert_same_data(load_jets(tmp_path / "jets"), cube64)
    cache = JetCache(tmp_path / "jets")
    assert (len(cache), cache.n_shards, cache.order, cache.dtype) == (30, 4, 2, torch.float64)
    idx = torch.tensor([29, 3, 8, 7, 3, 16, 0])  # any order, repeats, across shards
    x, y = cache.jets(idx, order=1)
    assert x.order == y.order == 1
    assert torch.equal(x.d1, cube64.inputs.d1[idx]) and torch.equal(y.value, cube64.targets.value[idx])
    assert torch.equal(cache.points(idx), cube64.points[idx])
    _assert_same_data(cache.load(idx), cube64.subset(idx))
    # An in-memory data set written as shards, and an old single-file cache read as a source.
    _assert_same_data(load_jets(save_shards(cube64, tmp_path / "saved", shard_size=7)), cube64)
    old = ShardedCacheSource(save_jets(cube64, tmp_path / "old"))
    assert old.cache.n_shards == 1 and old.fingerprint == cube64.meta["fingerprint"]
    assert torch.equal(old.batch(idx, 0)[0].d2, cube64.inputs.d2[idx])


def test_statistics_of_a_cache_are_those_of_the_data_in_memory(cube64, tmp_path):
    source = ShardedCacheSource(save_shards(cube64, tmp_path / "c", shard_size=8))
    for chunk in (7, 256):  # chunks that straddle shards, and one chunk
        assert source.statistics(chunk_size=chunk) == LossScales.from_data(cube64.inputs, cube64.targets,
                                                                           chunk_size=chunk)
    idx = torch.tensor([1, 2, 5, 11, 12, 13, 20, 28])
    assert SubsetSource(source, idx).statistics() == LossScales.from_data(cube64.inputs[idx], cube64.targets[idx])
    assert InMemorySource(cube64).statistics() == LossScales.from_data(cube64.inputs, cube64.targets)


def _train(train, data: JetDataset, prefetch: int = 1) -> Trainer:
    """Two epochs, a validation set and random directions (the second-order default)."""
    model = build_model(MLPConfig(hidden=(8,)), data.inputs.value, data.targets.value, seed=0)
    config = TrainConfig(epochs=2, batch_size=7, learning_rate=0.01, validation=0.2, progress=False)
    trainer = Trainer(model, Objective.second_order(), train, data.subset(slice(0, 6)), config, prefetch=prefetch)
    trainer.fit()
    return trainer


def test_training_from_shards_gives_the_weights_of_memory(cube64, tmp_path):
    source = ShardedCacheSource(save_shards(cube64, tmp_path / "c", shard_size=8))
    memory = _train(cube64, cube64)
    sharded = _train(source, cube64)
    # The same batches, directions and scales: the same weights (to the last bit, here).
    assert _max_difference(memory.model.state_dict(), sharded.model.state_dict()) <= 1e-10
    assert [r["loss"] for r in memory.history.records] == pytest.approx([r["loss"] for r in sharded.history.records],
                                                                        rel=1e-12)
    assert memory.history.last_test["rmse"] == pytest.approx(sharded.history.last_test["rmse"], rel=1e-12)
    assert torch.equal(memory.validation.inputs.d2, sharded.validation.inputs.d2)  # the same held-out samples
    assert isinstance(sharded.source, SubsetSource) and memory.source is None
    # The checkpoint identity is the data's: the same fingerprint and size.
    assert memory._identity()["data_fingerprint"] == sharded._identity()["data_fingerprint"]
    # Reading ahead changes nothing; neither does the in-memory source's wrapper.
    assert _max_difference(_train(source, cube64, prefetch=0).model.state_dict(), sharded.model.state_dict()) == 0
    wrapped = _train(InMemorySource(cube64), cube64)
    assert wrapped.source is None and _max_difference(wrapped.model.state_dict(), memory.model.state_dict()) == 0


def test_generate_continues_where_it_stopped_and_redoes_only_missing_shards(tmp_path, monkeypatch):
    import manifoldtrain.data.shards as data_module

    sphere, path = Sphere(), tmp_path / "jets"
    args = dict(seed=4, shard_size=4, batch_size=4, progress=False)
    real = data_module._render_shard
    calls = []

    def interrupted(*a, **kw):
        calls.append(a[2])
        if len(calls) == 3:
            raise KeyboardInterrupt  # ctrl-C while the third shard is computed
        return real(*a, **kw)

    monkeypatch.setattr(data_module, "_render_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_shards(sphere, 20, path, **args)
    monkeypatch.setattr(data_module, "_render_shard", real)
    partial = tmp_path / ".jets.partial"
    assert not path.exists()
    assert sorted(p.name for p in partial.iterdir()) == ["meta.json", "shard-00000", "shard-00001"]
    with pytest.raises(FileNotFoundError, match="no complete jet cache.*unfinished generation.*run the same"):
        load_jets(path)
    # A worker killed while writing shard 2 leaves a temporary folder; shard 1 gets lost.
    junk = partial / ".shard-00002.tmp-killed"
    junk.mkdir()
    (junk / "input_value.npy").write_bytes(b"\x93NUMPY\x01\x00")
    shutil.rmtree(partial / "shard-00001")
    report = generate_shards(sphere, 20, path, **args)
    assert (report.kept, report.written) == ((0,), (1, 2, 3, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets"]
    reference = generate_jets(sphere, 20, seed=4, batch_size=4, progress=False)
    _assert_same_data(load_jets(path), reference)
    # Complete: nothing to do. A damaged shard (cut short, or its record lost) is redone alone.
    assert generate_shards(sphere, 20, path, **args).written == ()
    victim = path / "shard-00003" / "input_d2.npy"
    victim.write_bytes(victim.read_bytes()[:-8])
    (path / "shard-00001" / "shard.json").unlink()
    assert generate_shards(sphere, 20, path, **args).written == (1, 3)
    _assert_same_data(load_jets(path), reference)
    # Other settings: the cache is replaced, and an unfinished generation of other settings discarded.
    (tmp_path / ".jets.partial").mkdir()
    (tmp_path / ".jets.partial" / "meta.json").write_text(json.dumps({"format": "manifoldtrain-jet-shards"}))
    assert generate_shards(sphere, 20, path, **{**args, "seed": 5}).kept == ()
    assert load_jets(path).meta["seed"] == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["jets"]
    # A folder in that place that is not ours is refused and kept, files and all; an empty one
    # (a generation stopped before its meta.json) is ours.
    (tmp_path / ".jets.partial").mkdir()
    (tmp_path / ".jets.partial" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"path: .*\.jets\.partial .* holds no manifoldtrain jet cache"):
        generate_shards(sphere, 20, path, **{**args, "seed": 6})
    assert (tmp_path / ".jets.partial" / "notes.txt").read_text() == "mine" and load_jets(path).meta["seed"] == 5
    (tmp_path / ".jets.partial" / "notes.txt").unlink()
    assert generate_shards(sphere, 20, path, **{**args, "seed": 6}).kept == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets"]


def test_a_killed_worker_is_reported_and_the_same_call_finishes(tmp_path):
    flag = tmp_path / "die-once"
    flag.write_text("")
    sphere, path = DyingSphere(flag), tmp_path / "jets"
    args = dict(seed=2, shard_size=4, batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="workers: a worker process died") as err:
        generate_shards(sphere, 24, path, workers=2, **args)
    assert "run the same command again to continue" in str(err.value) and not flag.exists()
    report = generate_shards(sphere, 24, path, **args)
    assert sorted(report.written + report.kept) == list(range(6)) and report.written
    _assert_same_data(load_jets(path), generate_jets(sphere, 24, seed=2, batch_size=4, progress=False))


def test_a_truncated_shard_is_named_with_the_remedy(cube64, tmp_path):
    path = save_shards(cube64, tmp_path / "c", shard_size=8)
    victim = path / "shard-00001" / "input_d1.npy"
    victim.write_bytes(victim.read_bytes()[:-100])
    for open_it in (JetCache, load_jets, ShardedCacheSource):
        with pytest.raises(ValueError, match="shard 1 of the cache .* is damaged or incomplete") as err:
            open_it(path)
        message = str(err.value)
        assert f"{victim} is truncated" in message and "`manifoldtrain generate`" in message
    # Cut while the cache is open: the read that reaches the end names the file.
    path = save_shards(cube64, tmp_path / "d", shard_size=8)
    cache = JetCache(path)
    victim = path / "shard-00003" / "input_d2.npy"
    os.truncate(victim, victim.stat().st_size - 100)
    cache.read("input_d2", [24])
    with pytest.raises(ValueError, match=f"path: {victim} is truncated"):
        cache.read("input_d2", [29])
    shutil.rmtree(path / "shard-00002")
    with pytest.raises(ValueError, match="shard-00002 is missing"):
        JetCache(path)
    with pytest.raises(IndexError, match=r"indices: expected sample indices in \[0, 30\), got 30"):
        cache.read("points", [30])


class _NaNCube(Cube):
    """The small cube, but the third sample of a chunk of 4 gets a NaN target derivative."""

    def jets(self, points, order=2, **kwargs):
        x, y = super().jets(points, order, **kwargs)
        if len(points) == 4:
            y.d1[2, 1, 0] = float("nan")
        return x, y


def test_a_damaged_value_is_named_and_non_finite_jets_are_never_stored(cube64, tmp_path):
    # Intact sizes and headers, one NaN inside (damage the opening checks cannot see): the
    # read that reaches it names the file, the row and the remedy, however the cache is read.
    path = save_shards(cube64, tmp_path / "c", shard_size=8)
    victim = path / "shard-00001" / "target_d1.npy"
    overwrite(victim, (5, 2, 3))
    cache = JetCache(path)
    assert torch.equal(cache.read("target_d1", [0, 12]), cube64.targets.d1[[0, 12]])  # other rows read fine
    pattern = (rf"path: {victim} holds NaN or infinite values in row 5 \(sample 13 of the cache\).* the file is "
               rf"damaged: delete {victim.parent} and rerun what wrote the cache \(the `manifoldtrain generate` "
               r"command, or a run with data.cache_dir\): it computes that shard anew")
    with pytest.raises(ValueError, match=pattern):
        cache.read("target_d1", [2, 13])
    with pytest.raises(ValueError, match=pattern):
        load_jets(path)
    with pytest.raises(ValueError, match=pattern):
        ShardedCacheSource(path).statistics()
    # The remedy works: that shard computed anew, the others kept, the cache whole again.
    shutil.rmtree(victim.parent)
    report = generate_shards(SMALL, 30, path, seed=1, dtype=torch.float64, shard_size=8, batch_size=8, progress=False)
    assert report.written == (1,) and report.kept == (0, 2, 3)
    _assert_same_data(load_jets(path), cube64)
    single = save_jets(cube64, tmp_path / "s")
    overwrite(single / "input_d2.npy", (29, 0, 0, 0), -np.inf)
    with pytest.raises(ValueError, match=r"input_d2\.npy holds NaN or infinite values in row 29 \(sample 29.*write the "
                                         r"cache again \(`manifoldtrain generate`, or save_jets; a cache in a "
                                         r"data.cache_dir: delete"):
        load_jets(single)
    # Nothing stores non-finite jets: a data set holding one, a manifold that gives one.
    targets = Jet(*(c.clone() for c in cube64.targets.components()))
    targets.d2[7, 3, 1] = float("inf")
    bad = JetDataset(cube64.points, cube64.inputs, targets, cube64.meta)
    points = cube64.points.clone()
    points[4, 0] = float("nan")
    for save in (save_jets, save_shards):
        with pytest.raises(ValueError, match="dataset: the target d2 of sample 7 holds NaN or infinite values"):
            save(bad, tmp_path / "x")
        with pytest.raises(ValueError, match="dataset: has point 4 holding NaN or infinite values"):
            save(JetDataset(points, cube64.inputs, cube64.targets, cube64.meta), tmp_path / "x")
        assert not (tmp_path / "x").exists()
    nan_cube = _NaNCube(image_size=9, extent=0.5, sigma=0.08)
    tenth = nan_cube.sample(12, torch.Generator().manual_seed(1), dtype=torch.float64)[10]
    point = re.escape(f"(point {[round(v, 6) for v in tenth.tolist()]}) holds NaN or infinite values")
    with pytest.raises(ValueError, match=rf"_NaNCube\.jets gave the target d1 of sample 10 {point}"):
        generate_jets(nan_cube, 12, seed=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=rf"_NaNCube\.jets gave the target d1 of sample 10 {point}"):
        generate_shards(nan_cube, 12, tmp_path / "y", seed=1, shard_size=8, batch_size=8, progress=False)
    assert not (tmp_path / "y").exists()  # no cache, complete or otherwise, under that name


def test_statistics_name_a_sample_holding_nan(cube64):
    inputs = Jet(*(c.clone() for c in cube64.inputs.components()))
    inputs.d1[21, 4, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs: the d1 of sample 21 holds NaN or infinite values"):
        LossScales.from_data(inputs, cube64.targets)
    with pytest.raises(ValueError, match="inputs: the d1 of sample 21 holds NaN"):
        InMemorySource(JetDataset(cube64.points, inputs, cube64.targets, cube64.meta)).statistics()

    class Mine(DataSource):  # a user's source: the default statistics name its batch method
        order = 2

        def __len__(self):
            return 30

        def batch(self, indices, epoch, order=None):
            return inputs[indices], cube64.targets[indices]

        def description(self):
            return {"kind": "mine"}

    with pytest.raises(ValueError, match="Mine.batch: the input d1 of sample 21 holds NaN or infinite values"):
        Mine().statistics(chunk_size=8)


def test_a_batch_reads_its_rows_and_nothing_else(cube64, tmp_path, monkeypatch):
    source = ShardedCacheSource(save_shards(cube64, tmp_path / "c", shard_size=8))
    read = []
    real = os.preadv

    def counting(fd, buffers, offset):
        read.append(sum(memoryview(b).nbytes for b in buffers))
        return real(fd, buffers, offset)

    def refuse(*a, **kw):
        raise AssertionError("the source loaded or mapped a whole file")

    monkeypatch.setattr(os, "preadv", counting)
    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(np, "memmap", refuse)
    idx = torch.tensor([3, 17, 4, 3, 29])
    x, y = source.batch(idx, 0, 1)  # first order: the second derivatives are not read
    row = sum(t[0].numel() * 8 for t in (*cube64.inputs.components()[:2], *cube64.targets.components()[:2]))
    assert sum(read) == len(idx) * row
    assert torch.equal(x.d1, cube64.inputs.d1[idx]) and y.order == 1


_MEMORY_CHECK = """
import gc, sys, tempfile
from pathlib import Path
import torch
from manifoldtrain.data import JetDataset, save_shards
from manifoldtrain.jet import Jet
from manifoldtrain.sources import ShardedCacheSource

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

n, d = 360, 6
g = torch.Generator().manual_seed(0)
inputs = Jet(torch.randn(n, 64, 64, generator=g), torch.randn(n, d, 64, 64, generator=g))
data = JetDataset(torch.zeros(n, 2), inputs, Jet(torch.randn(n, 3, generator=g), torch.randn(n, d, 3, generator=g)))
del inputs
path = save_shards(data, Path(sys.argv[1]) / "c", shard_size=50)
size = sum(f.stat().st_size for f in path.rglob("*.npy"))
del data
gc.collect()
source = ShardedCacheSource(path)
base = peak = rss()
for epoch in range(3):  # three passes over all of it, in random batches
    for idx in torch.randperm(n, generator=g).split(16):
        x, y = source.batch(idx, epoch)
        del x, y
        peak = max(peak, rss())
held = [source.batch(idx, 0) for idx in torch.arange(n).split(16)]  # the control: every row kept
print(size, peak - base, rss() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) to read the resident memory")
def test_memory_stays_flat_while_training_reads_a_cache(tmp_path):
    """Reading a 41 MB cache in batches, three times over, keeps the resident memory flat; keeping
    every batch (the control) does not. Measured in a process of its own whose allocator returns
    freed buffers at once (glibc's MALLOC_MMAP_THRESHOLD_): with its default, growing threshold
    the resident size also counts buffers freed but kept for reuse, 1-9 MB from run to run."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHECK, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    size, grown, held = (int(v) for v in out.stdout.split())
    assert size > 40e6 and held > size / 2, f"the control kept {held / 1e6:.1f} MB of a {size / 1e6:.1f} MB cache"
    assert grown < size / 8, f"resident memory grew by {grown / 1e6:.1f} MB"


# ----------------------------------------------------------------- on the fly


def test_fresh_points_every_epoch_alike_on_every_process_and_reproducible():
    rank0 = OnTheFlySource(Sphere(), 16, mode="fresh", seed=3)
    rank1 = OnTheFlySource(Sphere(), 16, mode="fresh", seed=3)  # another process: its own object
    assert rank0.unlimited and len(rank0) == 16
    assert not torch.equal(rank0.epoch_points(0), rank0.epoch_points(1))
    assert not torch.equal(rank0.epoch_points(0), OnTheFlySource(Sphere(), 16, seed=4).epoch_points(0))
    idx = torch.tensor([5, 1, 9, 14])
    for epoch in (2, 0, 7):
        x0, y0 = rank0.batch(idx, epoch)
        x1, y1 = rank1.batch(idx[:2], epoch)  # shards of one global batch
        x2, _ = rank1.batch(idx[2:], epoch)
        assert torch.equal(torch.cat([x1.d2, x2.d2]), x0.d2) and torch.equal(y1.value, y0.value[:2])
    x, y = Sphere().jets(rank0.epoch_points(7)[idx], 2)
    x7, y7 = rank0.batch(idx, 7)
    assert torch.equal(x7.d2, x.d2.float()) and torch.equal(y7.d1, y.d1.float())
    assert rank0.batch(idx, 7, order=0)[0].order == 0
    assert rank0.fingerprint == rank1.fingerprint != OnTheFlySource(Sphere(), 16, seed=4).fingerprint


def test_a_pool_renders_each_point_the_same_way_every_time():
    source = OnTheFlySource(Sphere(), 12, mode="pool", seed=2, order=1, calibration=10)
    assert not source.unlimited
    a = source.batch(torch.tensor([3, 7]), 0)
    b = source.batch(torch.tensor([7, 0, 3]), 5)
    assert torch.equal(a[0].d1[0], b[0].d1[2]) and torch.equal(a[1].value[1], b[1].value[0])
    reference = generate_jets(Sphere(), 12, seed=2, order=1, progress=False)  # the same points
    torch.testing.assert_close(b[0].d1, reference.inputs.d1[[7, 0, 3]], rtol=1e-6, atol=1e-7)
    x, y = source.batch(torch.arange(10), 0)
    assert source.statistics() == LossScales.from_data(x, y)  # the calibration sample's
    with pytest.raises(ValueError, match="mode: expected one of"):
        OnTheFlySource(Sphere(), 4, mode="sometimes")
    with pytest.raises(ValueError, match="points: a given set of points is a pool"):
        OnTheFlySource(Sphere(), points=reference.points.double())


def test_training_on_the_fly_with_a_validation_set_of_its_own():
    source = OnTheFlySource(Sphere(), 24, mode="fresh", seed=1)
    x, y = source.batch(torch.arange(24), 0, 0)
    model = build_model(MLPConfig(hidden=(8,)), x.value, y.value, seed=0)
    config = TrainConfig(epochs=3, batch_size=8, validation=0.25, progress=False)
    trainer = Trainer(model, Objective.second_order(), source, None, config)
    history = trainer.fit()
    assert trainer.source is source and len(trainer.validation) == 6 and trainer.steps == 9
    assert all(math_finite(r["loss"]) and "validation" in r for r in history.records)
    seen = torch.cat([source.epoch_points(e) for e in range(3)])
    assert not (trainer.validation.points.double()[:, None] == seen[None]).all(-1).any()

    class Endless(OnTheFlySource):  # unlimited, with the default hold_out: refused, naming the setting
        hold_out = DataSource.hold_out

    with pytest.raises(ValueError, match="config.validation: Endless draws new samples every epoch"):
        Trainer(model, Objective.second_order(), Endless(Sphere(), 8), None, config)


def math_finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# ----------------------------------------------------------------- configs, runs, your own source

TOML = cube_toml(
    top={"model_seed": 3},
    n_train=21, n_test=8, data={"seed": 2, "dtype": "float64", "source": "shards", "path": "PATH"},
    hidden=[12, 12],
    terms=({"kind": "value"}, {"kind": "derivative", "order": 1}, {"kind": "derivative", "order": 2}),
    train={"epochs": 2, "batch_size": 5, "learning_rate": 0.01, "validation": 0.25},
)


def _config(cache, **data):
    table = tomllib.loads(TOML.replace("PATH", str(cache)))
    table["data"].update(data)
    table["data"] = {k: v for k, v in table["data"].items() if v is not None}
    return config_from_dict(table)


@pytest.fixture(scope="module")
def shard_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "jets"
    generate_shards(SMALL, 29, path, seed=2, dtype=torch.float64, shard_size=8, batch_size=8, progress=False)
    return path


def test_the_source_is_chosen_in_toml(shard_cache, tmp_path):
    for data in ({}, {"source": "memory"}, {"source": "on-the-fly", "mode": "pool", "path": None},
                 {"source": "on-the-fly", "calibration": 64, "path": None},
                 {"source": "custom_data_source:NpyFolderSource"}):
        config = _config(shard_cache, **data)
        save_config(config, tmp_path / "c.toml")
        assert load_config(tmp_path / "c.toml") == config
        assert config_to_dict(config)["data"]["source"] == data.get("source", "shards")
    assert config_from_dict({}).data.source == "memory"  # configs without it: as before
    bad = [({"mode": "pool"}, ValueError, "data.mode: chooses how source = 'on-the-fly' draws its points"),
           ({"source": "on-the-fly", "mode": "often"}, ValueError, r"data.mode: expected one of \['fresh', 'pool'\]"),
           ({"calibration": 5}, ValueError, "data.calibration: sizes the calibration sample"),
           ({"source": "disk"}, ValueError, "data.source: expected 'memory', 'shards', 'on-the-fly' or"),
           ({"source": 3}, TypeError, "data.source: expected a string"),
           ({"source": "manifoldtrain.manifolds:Cube"}, TypeError, "not a subclass of DataSource")]
    for data, error, message in bad:
        with pytest.raises(error, match=message):
            _config(shard_cache, **data)
    with pytest.raises(ValueError, match="data.source: 'shards' reads a jet cache batch by batch; set data.path"):
        make_data(_config(shard_cache, path=None))
    with pytest.raises(ValueError, match="data.path: source = 'on-the-fly' computes its jets and reads no cache"):
        make_data(_config(shard_cache, source="on-the-fly"))
    with pytest.raises(ValueError, match="data.cache_dir: source = 'on-the-fly' computes its jets and stores none"):
        make_data(_config(shard_cache, source="on-the-fly", path=None, cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("source", ["shards", "memory"])
def test_a_cache_computed_in_another_dtype_is_named(shard_cache, source):
    """data.compute_dtype describes the run's data (its config.toml records it): a cache computed
    in another dtype is refused, as one stored in another dtype is."""
    with pytest.raises(ValueError, match=r"data.compute_dtype: the jets of .*jets \(data.path\) were computed in "
                                         r"float64, data.compute_dtype is 'float32'; set it to 'float64'"):
        make_data(_config(shard_cache, source=source, compute_dtype="float32"))


def test_a_cache_dir_passed_as_a_cache_names_its_caches(shard_cache, tmp_path):
    """The folder of a data.cache_dir (caches in fingerprint-named subfolders) is not a cache:
    the error points at the caches inside it; a path that does not exist says so."""
    with pytest.raises(FileNotFoundError, match=r"data.path: no complete jet cache at .* \(missing meta.json\); it "
                                                r"holds 1 jet cache in subfolders \(jets\), as a data.cache_dir does: "
                                                r"pass one of them, e.g. .*jets$"):
        make_data(_config(shard_cache.parent))
    with pytest.raises(FileNotFoundError, match=r"^data.path: no jet cache at .*nowhere: there is no such file or "
                                                r"folder; pass a folder written by `manifoldtrain generate`$"):
        make_data(_config(tmp_path / "nowhere"))


def test_generate_command_writes_shards_and_continues(tmp_path, capsys, monkeypatch):
    from manifoldtrain.cli import main

    monkeypatch.chdir(tmp_path)
    command = ["generate", "cube", "--n", "6", "--out", "jets", "--image-size", "9", "--shard-size", "4",
               "--no-progress"]
    assert main(command) == 0
    assert "wrote 6 samples of order 2 to jets in 2 shards" in capsys.readouterr().out
    assert JetCache("jets").n_shards == 2
    shutil.rmtree(tmp_path / "jets" / "shard-00001")  # lost: the same command redoes it alone
    assert main(command) == 0
    assert "wrote 6 samples of order 2 to jets in 2 shards; kept 1 intact shard of an earlier, unfinished or damaged" \
        in capsys.readouterr().out
    assert main(command) == 0
    assert "the cache at jets is complete already" in capsys.readouterr().out
    for option, value, message in (("--shard-size", "0", "--shard-size: expected an int >= 1, got 0"),
                                   ("--workers", "0", "--workers: expected an int >= 1, got 0")):
        with pytest.raises(SystemExit):
            main([*command, option, value])
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets"]
    assert load_config(Path(__file__).resolve().parents[1] / "examples" / "on_the_fly.toml").data.mode == "fresh"


def test_damage_found_while_training_from_shards_names_the_option(shard_cache, tmp_path, capsys):
    from manifoldtrain.cli import main

    damaged = tmp_path / "jets"
    shutil.copytree(shard_cache, damaged)
    victim = damaged / "shard-00002" / "target_d1.npy"
    overwrite(victim, (1, 0, 0))
    save_config(_config(damaged), tmp_path / "c.toml")
    found = f"{victim} holds NaN or infinite values in row 1 (sample 17 of the cache)"
    for extra, name in (([], "data.path"), (["--data", str(damaged)], "--data")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / name), *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: {name}: {found}" in err, err
        assert f"delete {victim.parent} and rerun what wrote the cache" in err


def test_each_source_gives_the_data_of_memory(shard_cache):
    train, test = make_data(_config(shard_cache, source="memory"))
    sharded, sharded_test = make_data(_config(shard_cache))
    _assert_same_data(sharded_test, test)
    idx = torch.arange(len(train))
    assert isinstance(sharded, SubsetSource) and torch.equal(sharded.batch(idx, 0)[0].d2, train.inputs.d2)
    for mode in ("pool", "fresh"):
        computed, computed_test = make_data(_config(shard_cache, source="on-the-fly", mode=mode, path=None))
        assert torch.equal(computed_test.points, test.points)  # the same test samples, computed now
        torch.testing.assert_close(computed_test.inputs.d2, test.inputs.d2, rtol=1e-9, atol=1e-12)
        assert len(computed) == len(train) and computed.mode == mode
    assert computed.batch(idx, 0)[0].value.shape == train.inputs.value.shape
    pool, _ = make_data(_config(shard_cache, source="on-the-fly", mode="pool", path=None))
    torch.testing.assert_close(pool.batch(idx, 4)[0].d1, train.inputs.d1, rtol=1e-9, atol=1e-12)


def test_compute_dtype_sets_the_precision_jets_are_computed_in(shard_cache, tmp_path):
    """``data.compute_dtype = "float32"``: the same points, jets computed in float32 (close to the
    float64 ones, not equal), a cache of its own (another fingerprint), on the fly too."""
    base = dict(path=None, dtype="float64")
    train64, test64 = make_data(_config(shard_cache, source="memory", **base))
    train32, test32 = make_data(_config(shard_cache, source="memory", compute_dtype="float32", **base))
    assert torch.equal(train32.points, train64.points.float().double())  # the same points, in float32
    assert train32.meta["compute_dtype"] == "float32"
    for a, b in zip(train32.inputs.components(), train64.inputs.components()):
        assert not torch.equal(a, b)
        assert float((a - b).norm() / b.norm()) < 1e-5
    cached = [make_data(_config(shard_cache, source="memory", cache_dir=str(tmp_path / "c"), compute_dtype=c, **base))
              for c in ("float32", "float64")]
    assert len(list((tmp_path / "c").iterdir())) == 2  # one cache each
    assert torch.equal(cached[0][0].inputs.d2, train32.inputs.d2) and torch.equal(cached[1][0].inputs.d2, train64.inputs.d2)
    fly, fly_test = make_data(_config(shard_cache, source="on-the-fly", mode="pool", compute_dtype="float32", **base))
    assert fly.compute_dtype == torch.float32
    torch.testing.assert_close(fly_test.inputs.d2, test32.inputs.d2, rtol=1e-6, atol=1e-9)
    idx = torch.arange(len(train32))
    torch.testing.assert_close(fly.batch(idx, 0)[0].d2, train32.inputs.d2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="data.compute_dtype"):
        _config(shard_cache, compute_dtype="float16")


def test_a_users_source_from_toml(shard_cache, tmp_path):
    from custom_data_source import NpyFolderSource, write_folder

    data = load_jets(shard_cache)
    write_folder(data.subset(slice(0, 21)), tmp_path / "mine")
    config = _config(tmp_path / "mine", source="custom_data_source:NpyFolderSource")
    train, test = make_data(config)
    assert isinstance(train, NpyFolderSource) and len(train) == 21 and len(test) == 8
    results = run_experiment(config, tmp_path / "run", progress=False)
    assert results["epochs"] == 2 and results["n_validation"] == 5 and results["test"]["rmse"] > 0


def _two_process_worker(rank, port, folder, cache):
    from manifoldtrain.distributed import TIMEOUT_ENV

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", **{TIMEOUT_ENV: "30"})
    torch.set_num_threads(1)
    outcome = {}
    try:
        results = run_experiment(_config(cache), Path(folder) / "two", resume=False, progress=False)
        outcome = {"ok": True, "world_size": results["world_size"], "train_loss": results["train_loss"]}
    except Exception as err:  # noqa: BLE001 - reported to the parent
        outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(outcome))


def test_two_processes_train_from_shards_as_one_process_from_memory(shard_cache, tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with the gloo backend")
    one = run_experiment(_config(shard_cache), tmp_path / "one", progress=False)
    memory = run_experiment(_config(shard_cache, source="memory"), tmp_path / "memory", progress=False)
    weights = {name: load_checkpoint(tmp_path / name / CHECKPOINT_NAME)["model"] for name in ("one", "memory")}
    assert _max_difference(weights["one"], weights["memory"]) <= 1e-10
    assert one["test"] == memory["test"] and one["n_validation"] == memory["n_validation"] == 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_two_process_worker, args=(port, str(tmp_path), str(shard_cache)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while any(p.exitcode is None for p in context.processes) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for p in context.processes:  # never leave a process behind
            if p.is_alive():
                p.kill()
            p.join(5)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(o["ok"] for o in outcomes), outcomes
    two = load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)
    assert two["world_size"] == 2 and two["step"] == one["steps"]
    assert _max_difference(two["model"], weights["one"]) <= 1e-10
    assert outcomes[0]["train_loss"] == pytest.approx(one["train_loss"], rel=1e-10)
