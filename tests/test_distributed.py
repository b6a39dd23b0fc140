"""Data-parallel training on several processes (gloo on the CPU): equivalence with one process,
resumption across numbers of processes, agreed failures, a failing rank, the CLI under torchrun."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from manifoldtrain.config import config_from_dict
from manifoldtrain.distributed import (BUCKET_BYTES, TIMEOUT_ENV, DistributedContext, _buckets, collective_timeout,
                                       direction_seed)
from manifoldtrain.experiment import run_experiment
from manifoldtrain.objectives import Objective
from manifoldtrain.training import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint

from config_helpers import cube_toml

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

# 21 samples, a quarter held out for validation: 16 to train on, in global batches of 5 (3 + 2
# samples on two processes) and a last one of 1 (1 + 0: one process has nothing to do).
# Value and full first- and second-order terms: no random directions, so two processes must
# reproduce one to rounding; float64 for a tight tolerance; clipping after the reduction.
TOML = cube_toml(
    top={"model_seed": 3},
    n_train=21, n_test=8, data={"seed": 2, "dtype": "float64"},
    hidden=[12, 12],
    terms=({"kind": "value"}, {"kind": "derivative", "order": 1}, {"kind": "derivative", "order": 2}),
    train={"epochs": 4, "batch_size": 5, "learning_rate": 0.01, "grad_clip": 1.0, "validation": 0.25},
)
STOP_AT = 2  # the interrupted runs stop after this many epochs
DEADLINE = 150.0  # seconds for the whole two-process session (it takes about 20)


def _config(**train):
    table = tomllib.loads(TOML)
    table["train"].update(train)
    return config_from_dict(table)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _StopEarly:
    """Make every run stop after ``STOP_AT`` epochs, as a run killed then would (the checkpoint
    of that epoch is the one it leaves)."""

    def __enter__(self):
        self.original = Trainer._out_of_budget
        original = self.original
        Trainer._out_of_budget = lambda trainer: trainer.epoch >= STOP_AT or original(trainer)

    def __exit__(self, *exc):
        Trainer._out_of_budget = self.original


def _nan_in_second_step(rank):
    """On rank 1 only, a NaN value loss in the second step (its shard's loss, not the data:
    a NaN in the data would be refused on that rank alone)."""
    original = Objective.losses
    calls = [0]

    def losses(objective, *args, **kw):
        out = original(objective, *args, **kw)
        calls[0] += 1
        if calls[0] == 2 and rank == 1:
            out = {k: v * float("nan") if k == "value" else v for k, v in out.items()}
        return out

    Objective.losses = losses
    return original


def _worker(rank, port, folder):
    """One of two processes: the tasks in order, each outcome written to ``folder/rankR.json``;
    the last task ("fail") lets rank 1's error (and the others' consequence) end the process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", **{TIMEOUT_ENV: "30"})
    torch.set_num_threads(1)
    folder = Path(folder)
    replaced = []  # every atomic write ends in os.replace: rank 1 must make none
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        replaced.append(str(dst))
        return real_replace(src, dst, *a, **k)

    os.replace = replace
    outcomes = {}

    def record(name, fn):
        start = time.monotonic()
        try:
            res = fn()
            outcomes[name] = {"ok": True, "world_size": res["world_size"], "train_loss": res["train_loss"],
                              "best_epoch": res["best_epoch"], "steps": res["steps"], "epochs": res["epochs"],
                              "seconds_trained": res["seconds"]}
        except Exception as err:  # noqa: BLE001 - recorded for the parent to check
            outcomes[name] = {"ok": False, "error": type(err).__name__, "message": str(err)}
        outcomes[name]["seconds"] = time.monotonic() - start
        outcomes["replaced"] = list(replaced)
        text = json.dumps(outcomes)
        (folder / f"rank{rank}.json").write_text(text)  # not os.replace: the parent reads it after the exit

    record("full", lambda: run_experiment(_config(), folder / "full", resume=False, progress=False))
    with _StopEarly():
        record("stop", lambda: run_experiment(_config(), folder / "stop", resume=False, progress=False))
    record("resume", lambda: run_experiment(_config(), folder / "resume", resume=True, progress=False))
    # A time budget that ends the run long before its epochs: every process must stop at the same
    # step, even when their clocks disagree (rank 1's runs twice as fast here).
    real_clock = time.perf_counter
    if rank == 1:
        time.perf_counter = lambda: 2 * real_clock()
    try:
        record("budget", lambda: run_experiment(_config(epochs=500, time_budget=0.3), folder / "budget", resume=False,
                                                progress=False))
    finally:
        time.perf_counter = real_clock
    original = _nan_in_second_step(rank)
    try:
        record("nan", lambda: run_experiment(_config(), folder / "nan", resume=False, progress=False))
    finally:
        Objective.losses = original
    # Rank 1 fails in its third step; rank 0 is then waiting for it in the gradient all-reduce.
    original_step = Trainer.step
    calls = [0]

    def failing_step(trainer, batch, **kw):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            raise RuntimeError("injected failure")
        return original_step(trainer, batch, **kw)

    Trainer.step = failing_step
    outcomes["fail_started"] = time.time()
    (folder / f"rank{rank}.json").write_text(json.dumps(outcomes))
    run_experiment(_config(), folder / "fail", resume=False, progress=False)  # raises: the process exits 1


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same_weights(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=tol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Single-process references, then one two-process session of every task; what both left."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("distributed")
    # A one-process run interrupted after STOP_AT epochs, for two processes to resume.
    with _StopEarly():
        run_experiment(_config(), folder / "resume", resume=False, progress=False)
    assert load_checkpoint(folder / "resume" / CHECKPOINT_NAME)["epoch"] == STOP_AT
    reference = run_experiment(_config(), folder / "reference", resume=False, progress=False)

    err_log = folder / "stderr.txt"
    saved = os.dup(2)
    started = time.monotonic()
    with open(err_log, "w") as log:
        os.dup2(log.fileno(), 2)  # the children inherit it: their messages land in the file
        try:
            context = mp.start_processes(_worker, args=(_free_port(), str(folder)), nprocs=2, join=False,
                                         start_method="spawn")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    exited = {}
    try:
        while len(exited) < 2 and time.monotonic() - started < DEADLINE:
            for rank, process in enumerate(context.processes):
                if rank not in exited and process.exitcode is not None:
                    exited[rank] = (process.exitcode, time.time())
            time.sleep(0.05)
    finally:
        for process in context.processes:  # never leave a process behind
            if process.is_alive():
                process.kill()
            process.join(5)
    stderr = err_log.read_text()
    assert len(exited) == 2, f"the two-process session did not end within {DEADLINE} s; stderr:\n{stderr[-3000:]}"
    outcomes = []
    for rank in range(2):
        path = folder / f"rank{rank}.json"
        assert path.is_file(), f"rank {rank} wrote no outcomes; stderr:\n{stderr[-3000:]}"
        outcomes.append(json.loads(path.read_text()))
    return {"folder": folder, "reference": reference, "outcomes": outcomes, "exited": exited, "stderr": stderr}


def _ok(session, task):
    for rank, outcome in enumerate(session["outcomes"]):
        assert task in outcome, f"rank {rank} did not get to {task!r}; stderr:\n{session['stderr'][-3000:]}"
        assert outcome[task]["ok"], f"rank {rank}, {task!r}: {outcome[task]}"


def test_two_processes_train_the_model_of_one(session):
    _ok(session, "full")
    folder, reference = session["folder"], session["reference"]
    _assert_same_weights(_weights(folder / "full" / CHECKPOINT_NAME), _weights(folder / "reference" / CHECKPOINT_NAME))
    state = load_checkpoint(folder / "full" / CHECKPOINT_NAME)
    assert state["world_size"] == 2 and state["epoch"] == 4 and state["step"] == 16
    results = json.loads((folder / "full" / "results.json").read_text())
    assert results["world_size"] == 2 and reference["world_size"] == 1
    # One timed all-reduce per step on 2 processes; none on one.
    assert results["communication"]["steps"] == 16 and results["communication"]["all_reduce_seconds"] > 0
    assert reference["communication"] == {"all_reduce_seconds": 0.0, "steps": 0}
    # The logged losses are the global batches' means: the single-process numbers.
    for mine, theirs in zip(results["history"], reference["history"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-10)
        assert mine["validation"]["rmse"] == pytest.approx(theirs["validation"]["rmse"], rel=1e-9)
    assert results["best_epoch"] == reference["best_epoch"]
    for outcome in session["outcomes"]:  # every process returns the same results
        assert outcome["full"]["world_size"] == 2 and outcome["full"]["train_loss"] == pytest.approx(
            reference["train_loss"], rel=1e-10)
    assert (folder / "full" / "best.pt").is_file() and (folder / "full" / "metrics.csv").is_file()


def test_only_rank_0_writes(session):
    _ok(session, "full")
    rank0, rank1 = session["outcomes"]
    assert rank1["replaced"] == []
    assert any(p.endswith("results.json") for p in rank0["replaced"])


def test_a_run_of_two_processes_resumes_on_one(session):
    _ok(session, "stop")
    folder = session["folder"]
    assert load_checkpoint(folder / "stop" / CHECKPOINT_NAME)["epoch"] == STOP_AT
    resumed = run_experiment(_config(), folder / "stop", resume=True, progress=False)
    assert resumed["epochs"] == 4 and resumed["world_size"] == 1
    _assert_same_weights(_weights(folder / "stop" / CHECKPOINT_NAME), _weights(folder / "reference" / CHECKPOINT_NAME))


def test_a_run_of_one_process_resumes_on_two(session):
    _ok(session, "resume")
    folder = session["folder"]
    state = load_checkpoint(folder / "resume" / CHECKPOINT_NAME)
    assert state["epoch"] == 4 and state["world_size"] == 2
    _assert_same_weights(state["model"], _weights(folder / "reference" / CHECKPOINT_NAME))
    records = json.loads((folder / "resume" / "results.json").read_text())["history"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]


def test_a_time_budget_stops_every_rank_at_the_same_step(session):
    _ok(session, "budget")
    rank0, rank1 = (outcome["budget"] for outcome in session["outcomes"])
    assert (rank0["steps"], rank0["epochs"], rank0["seconds_trained"]) == (
        rank1["steps"], rank1["epochs"], rank1["seconds_trained"])
    assert rank0["epochs"] < 500 and rank0["seconds_trained"] >= 0.3


def test_a_non_finite_loss_on_one_rank_stops_every_rank_alike(session):
    messages = []
    for rank, outcome in enumerate(session["outcomes"]):
        nan = outcome["nan"]
        assert not nan["ok"] and nan["error"] == "FloatingPointError", f"rank {rank}: {nan}"
        messages.append(nan["message"])
    assert messages[0] == messages[1] and "term 'value' = nan became non-finite at epoch 1, step 2" in messages[0]
    # Agreed: no rank is reported as failed (the two reports are the failing run's, below).
    reports = [line for line in session["stderr"].splitlines() if line.startswith("manifoldtrain: rank")]
    assert len(reports) == 2 and "injected failure" in reports[0], reports
    # The group outlived it: the next run, on the same group, got to its failure (below).
    assert all("fail_started" in outcome for outcome in session["outcomes"])


def test_a_failing_rank_ends_the_run_with_a_message_naming_it(session):
    exited, stderr = session["exited"], session["stderr"]
    assert exited[0][0] != 0 and exited[1][0] != 0, f"exit codes {exited}"
    assert "manifoldtrain: rank 1 of 2 failed: RuntimeError: injected failure" in stderr
    assert "manifoldtrain: rank 0 of 2 failed" in stderr  # it lost contact with rank 1
    # Rank 0 stopped because rank 1 left the group, long before the 30 s collective timeout.
    assert abs(exited[0][1] - exited[1][1]) < 20, f"exit times {exited}"


def test_cli_under_torchrun(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TOML.replace("progress = false", "progress = true").replace("epochs = 4", "epochs = 2"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", TIMEOUT_ENV: "60"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "manifoldtrain", "train", "--config", str(config), "--out", str(out)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=150)
    finally:
        if process.poll() is None:  # never leave the launcher or its workers behind
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert "training on 2 processes (gloo)" in stderr
    summary = json.loads(stdout)  # printed once, by rank 0
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 8


# ----------------------------------------------------------------- one process, no communication


def test_one_process_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = DistributedContext.from_environment()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.is_distributed) == (0, 1, None, True, False)
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DistributedContext.from_environment() == DistributedContext.single()
    # Nothing communicates: the calls are the identity (or a plain product for the weight).
    model = torch.nn.Linear(3, 2).double()
    model(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    extra = ctx.all_reduce_gradients(model, 0.25, torch.tensor([1.0, 2.0], dtype=torch.float32))
    assert extra.dtype == torch.float64 and extra.tolist() == [1.0, 2.0]
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, 0.25 * g)
    assert ctx.agree_elapsed(1.5) == 1.5 and ctx.broadcast_object({"a": 1}) == {"a": 1}
    assert ctx.run_on_main(lambda: 7) == 7 and ctx.all_gather_object(3) == [3]
    idx = torch.arange(5)
    assert ctx.shard(idx) is idx
    ctx.barrier()
    ctx.broadcast_parameters(model)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE: expected an int >= 1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK: expected an int >= 0 and <= 1"),
        ({"WORLD_SIZE": "2"}, "RANK: not set"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1234"}, "MASTER_ADDR: not set"),
        ({"WORLD_SIZE": "2", "RANK": "1", TIMEOUT_ENV: "soon", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
         f"{TIMEOUT_ENV}: expected a number of seconds > 0, got 'soon'"),
    ],
)
def test_bad_environment_is_named(env, message, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        DistributedContext.from_environment()
    assert not dist.is_initialized()


def test_context_checks_its_fields_and_arguments():
    with pytest.raises(ValueError, match="rank: expected an int < world_size = 2"):
        DistributedContext(rank=2, world_size=2, backend="gloo", device="cpu")
    with pytest.raises(ValueError, match="backend: 2 processes need a backend"):
        DistributedContext(rank=0, world_size=2, backend=None, device="cpu")
    with pytest.raises(ValueError, match="backend: 'nccl' needs a CUDA device"):
        DistributedContext(rank=0, world_size=2, backend="nccl", device="cpu")
    with pytest.raises(ValueError, match="backend: expected one of"):
        DistributedContext(rank=0, world_size=2, backend="mpi", device="cpu")
    ctx = DistributedContext.single()
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="weight: expected a number <= 1"):
        ctx.all_reduce_gradients(model, 1.5)
    with pytest.raises(TypeError, match="extra: expected a 1-D floating-point tensor"):
        ctx.all_reduce_gradients(model, 1.0, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        ctx.broadcast_parameters("model")
    with pytest.raises(TypeError, match="indices: expected a 1-D tensor"):
        ctx.shard(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="seconds: expected a number >= 0"):
        ctx.agree_elapsed(-1.0)


def test_shards_tile_the_global_batch():
    idx = torch.arange(10, 17)  # 7 samples on 3 processes: 3, 2, 2
    shards = [DistributedContext(rank=r, world_size=3, backend="gloo", device="cpu").shard(idx) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    assert torch.equal(torch.cat(shards), idx)
    one = [DistributedContext(rank=r, world_size=2, backend="gloo", device="cpu").shard(idx[:1]) for r in range(2)]
    assert [len(s) for s in one] == [1, 0]


def test_buckets_keep_order_and_split_by_size_and_dtype():
    a, b, c = torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(30)
    buckets = _buckets([a, b, c, a], bucket_bytes=100)
    assert [[t.numel() for t in bucket] for bucket in buckets] == [[10], [30], [10], [10]]
    assert [bucket[0].dtype for bucket in buckets] == [torch.float32, torch.float32, torch.float32, torch.float64]
    assert len(_buckets([a, c, a], BUCKET_BYTES)) == 1


def test_direction_seeds_differ_by_rank_and_epoch_and_timeout_default(monkeypatch):
    seeds = {direction_seed(0, r, e) for r in range(4) for e in range(4)} | {direction_seed(1, 0, 0)}
    assert len(seeds) == 17 and all(0 <= s < 2**63 for s in seeds)
    assert direction_seed(5, 1, 2) == direction_seed(5, 1, 2)
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert collective_timeout() == 300.0
    monkeypatch.setenv(TIMEOUT_ENV, "-3")
    with pytest.raises(ValueError, match=TIMEOUT_ENV):
        collective_timeout()


def test_trainer_checks_distributed_and_global_size():
    from manifoldtrain.data import generate_jets
    from manifoldtrain.manifolds import Cube
    from manifoldtrain.nn import MLPConfig, build_model

    data = generate_jets(Cube(image_size=9, extent=0.5, sigma=0.08), 8, seed=1, order=1, progress=False)
    model = build_model(MLPConfig(hidden=(4,)), data.inputs.value, data.targets.value, seed=0)
    with pytest.raises(TypeError, match="distributed: expected a DistributedContext"):
        Trainer(model, Objective.first_order(), data, config=TrainConfig(progress=False), distributed="gloo")
    trainer = Trainer(model, Objective.first_order(), data, config=TrainConfig(progress=False))
    assert trainer.distributed == DistributedContext.single() and trainer.direction_generator is trainer.generator
    batch = trainer.batch(torch.arange(4))
    with pytest.raises(ValueError, match="global_size: one process holds the whole batch of 4 samples"):
        trainer.step(batch, global_size=8)
    trainer.step(batch, global_size=4)
    assert trainer.steps == 1


def test_the_example_config_loads():
    from manifoldtrain.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "distributed.toml")
    assert config.train.batch_size == 128 and config.data.cache_dir is not None
    assert all(getattr(term, "directions", None) is None for term in config.objective.terms)  # exact equivalence
