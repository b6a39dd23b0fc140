"""Data-parallel training on several processes: one model, trained by ``torchrun``'s workers.

Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) :meth:`DistributedContext.from_environment` joins the processes into one
process group (``gloo`` on the CPU, ``nccl`` on CUDA devices); without those variables it
returns the single-process context, which never communicates. The
:class:`~manifoldtrain.training.Trainer` then trains one model on all processes:

* every process holds the whole training set (or, with a
  :class:`~manifoldtrain.data.sources.DataSource` such as a sharded cache or jets computed on the
  fly, reads only its own shards of the batches) and the same model (its parameters and
  buffers are broadcast from rank 0 when the trainer is made and after a resume);
* every step's *global* batch (``TrainConfig.batch_size`` samples, from one batch order,
  identical on every process) is split into disjoint, contiguous shards, one per process
  (:meth:`DistributedContext.shard`);
* after ``backward`` each process's gradient, weighted by its shard's share of the global
  batch, is summed over the processes (:meth:`DistributedContext.all_reduce_gradients`, a
  few flat buckets, one collective per bucket per step): every loss being a mean over the
  batch, the result is the gradient of the global batch, as one process would compute it;
  clipping and the optimiser step then run on identical gradients.

The model is *not* wrapped in ``DistributedDataParallel``: the jet passes
(:func:`~manifoldtrain.network_jets.taylor_rows`, ``torch.func.jvp``) do not go through a
module's ``forward`` hooks, so the gradients are reduced explicitly here.

Failures end the run, not hang it: the process group has a finite timeout
(:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT` seconds), and
:meth:`DistributedContext.failure_guard` reports ``rank R of N failed: ...`` and leaves the
group, which stops the other processes' pending collectives at once.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import torch

from manifoldtrain._validation import check_float, check_int
from manifoldtrain.devices import check_device

__all__ = ["DistributedContext", "direction_seed", "collective_timeout", "mark_agreed", "TIMEOUT_ENV",
           "DEFAULT_TIMEOUT", "BUCKET_BYTES", "BACKENDS"]

#: The environment variable that sets how long, in seconds, a process waits in a collective
#: (and for the others to join the group) before it gives up with an error.
TIMEOUT_ENV = "MANIFOLDTRAIN_DIST_TIMEOUT"
#: Seconds a process waits in a collective when :data:`TIMEOUT_ENV` is not set.
DEFAULT_TIMEOUT = 300.0
#: Bytes of gradient per all-reduce (:meth:`DistributedContext.all_reduce_gradients`).
BUCKET_BYTES = 25 * 2**20
#: The process-group backend for each kind of device.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

T = TypeVar("T")


def collective_timeout() -> float:
    """Seconds to wait in a collective: :data:`TIMEOUT_ENV` if set, else :data:`DEFAULT_TIMEOUT`.

    Raises
    ------
    ValueError
        :data:`TIMEOUT_ENV` is set to something other than a number > 0 (the message names it).
    """
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}: expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}: expected a number of seconds > 0, got {text!r}")
    return value


def direction_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of the random directions that process ``rank`` draws in epoch ``epoch``
    (0-based) of a run seeded ``seed``, when training on several processes.

    Each process draws the directions of its own shard from a generator of its own, reseeded
    at every epoch from ``(seed, rank, epoch)`` by SHA-256: the draws of different processes
    are independent, and a run resumed at an epoch boundary on the same number of processes
    draws exactly what it would have drawn uninterrupted. (One process draws its directions
    from the batch-order generator, as it always has.)

    Returns
    -------
    int
        In ``[0, 2**63)``.
    """
    check_int("seed", seed, minimum=0)
    check_int("rank", rank, minimum=0)
    check_int("epoch", epoch, minimum=0)
    digest = hashlib.sha256(f"manifoldtrain-directions:{seed}:{rank}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _env_int(name: str, *, minimum: int, maximum: int | None = None, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is not None:
            return default
        raise ValueError(f"{name}: not set in the environment (torchrun sets it with WORLD_SIZE); run under "
                         "torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT yourself")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name}: expected an int {bound} in the environment (torchrun sets it), got {text!r}")
    return value


def _check_backend(instance, attribute, value):
    if value is None:
        if instance.world_size != 1:
            raise ValueError(f"backend: {instance.world_size} processes need a backend ('gloo' or 'nccl'), got None")
        return
    if value not in BACKENDS.values():
        raise ValueError(f"backend: expected one of {sorted(BACKENDS.values())} or None, got {value!r}")
    if instance.world_size == 1:
        raise ValueError(f"backend: one process communicates with nobody; expected None, got {value!r}")
    if value == "nccl" and instance.device.type != "cuda":
        raise ValueError(f"backend: 'nccl' needs a CUDA device, got device {instance.device}")


def _check_rank(instance, attribute, value):
    check_int(attribute.name, value, minimum=0)
    if value >= instance.world_size:
        raise ValueError(f"{attribute.name}: expected an int < world_size = {instance.world_size}, got {value}")


def _to_device(value: object) -> torch.device:
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {value!r}") from None
    raise TypeError(f"device: expected a torch.device or its name, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class DistributedContext:
    """Where this process stands among the processes that train one model.

    Made by :meth:`from_environment` (under ``torchrun``) or :meth:`single`. Every method
    that communicates is a *collective*: all processes must call it, in the same order.
    With ``world_size == 1`` none of them communicates.

    Attributes
    ----------
    rank : int
        This process's number, ``0 <= rank < world_size``; rank 0 writes the run's files.
    world_size : int
        How many processes train the model.
    backend : str or None
        ``"gloo"`` (CPU) or ``"nccl"`` (CUDA), the process group's backend; None for one process.
    device : torch.device
        Where this process trains (under ``torchrun`` with ``cuda``: ``cuda:LOCAL_RANK``).
    local_rank : int
        This process's number among those on its machine (``LOCAL_RANK``; default 0).
    """

    rank: int = attrs.field(validator=_check_rank)
    world_size: int = attrs.field(validator=lambda i, a, v: check_int(a.name, v, minimum=1))
    backend: str | None = attrs.field(validator=_check_backend)
    device: torch.device = attrs.field(converter=_to_device)
    local_rank: int = attrs.field(default=0, validator=lambda i, a, v: check_int(a.name, v, minimum=0))

    # ------------------------------------------------------------------ making one

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> DistributedContext:
        """The context of a run on one process (rank 0 of 1, no backend) on ``device``."""
        return cls(world_size=1, rank=0, device=device, backend=None)

    @classmethod
    def from_environment(
        cls, device: str | torch.device | None = None, *, argument: str = "device"
    ) -> DistributedContext:
        """Join the process group that ``torchrun`` describes, or return :meth:`single`.

        Without ``WORLD_SIZE`` in the environment, or with ``WORLD_SIZE=1``, this is one
        process: nothing is initialised and the result is :meth:`single` on ``device``.
        Otherwise it reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
        and initialises the default ``torch.distributed`` process group (``env://``
        rendezvous, so ``MASTER_ADDR`` and ``MASTER_PORT`` must be set, as ``torchrun``
        does) with a timeout of :func:`collective_timeout` seconds, unless it is initialised
        already (then it must agree). The group is destroyed at exit, or by :meth:`shutdown`.

        Parameters
        ----------
        device : str or torch.device, optional
            ``"cpu"`` (default; backend ``gloo``), ``"cuda"`` (backend ``nccl``; each process
            takes ``cuda:LOCAL_RANK``) or ``"cuda:N"`` (only with one process per machine).
        argument : str
            The name of ``device`` in error messages (e.g. ``"--device"``).

        Raises
        ------
        ValueError
            A malformed variable (named), a device that does not exist, ``cuda:N`` shared by
            several processes of a machine, more processes on a machine than GPUs, a backend
            that this torch lacks, or an initialised group that disagrees.
        """
        device = check_device(device if device is not None else "cpu", argument)
        if "WORLD_SIZE" not in os.environ:
            return cls.single(device)
        world_size = _env_int("WORLD_SIZE", minimum=1)
        if world_size == 1:
            _env_int("RANK", minimum=0, maximum=0, default=0)
            return cls.single(device)
        rank = _env_int("RANK", minimum=0, maximum=world_size - 1)
        local_rank = _env_int("LOCAL_RANK", minimum=0, default=rank)
        local_world = _env_int("LOCAL_WORLD_SIZE", minimum=1, default=world_size)
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError(f"WORLD_SIZE: {world_size} processes asked for, but this torch {torch.__version__} is "
                             "built without torch.distributed")
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if device.index is None:
                if local_rank >= count:
                    raise ValueError(f"LOCAL_RANK: process {local_rank} of this machine has no GPU of its own: the "
                                     f"machine has {count} CUDA device(s); start at most {count} processes per "
                                     "machine (--nproc_per_node)")
                device = torch.device("cuda", local_rank)
            elif local_world > 1:
                raise ValueError(f"{argument}: {str(device)!r} names one GPU for all {local_world} processes of "
                                 "this machine; pass 'cuda', and each process takes cuda:LOCAL_RANK")
            torch.cuda.set_device(device)
            if not dist.is_nccl_available():
                raise ValueError(f"{argument}: training on CUDA with {world_size} processes needs NCCL, which this "
                                 f"torch {torch.__version__} lacks")
        elif not dist.is_gloo_available():
            raise ValueError(f"WORLD_SIZE: training on the CPU with {world_size} processes needs the gloo backend, "
                             f"which this torch {torch.__version__} lacks")
        backend = BACKENDS[device.type]
        context = cls(world_size=world_size, rank=rank, device=device, backend=backend, local_rank=local_rank)
        if dist.is_initialized():
            theirs = (dist.get_world_size(), dist.get_rank(), dist.get_backend())
            if theirs != (world_size, rank, backend):
                raise ValueError(
                    f"WORLD_SIZE: torch.distributed is initialised already with world size {theirs[0]}, rank "
                    f"{theirs[1]}, backend {theirs[2]!r}; the environment and device ask for {world_size}, {rank}, "
                    f"{backend!r}"
                )
            return context
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ValueError(f"{name}: not set in the environment; run under torchrun (which sets it), or set "
                                 "MASTER_ADDR and MASTER_PORT to the address and a free port of rank 0's machine")
        timeout = datetime.timedelta(seconds=collective_timeout())
        # Imported later (by torch._dynamo, e.g. at the first optimiser step), this module
        # would bind the live default group into its functions' default arguments, and the
        # group could no longer be destroyed on a failure (the others would wait out the
        # timeout instead of stopping at once). Imported now, they bind None.
        import torch.distributed.nn.functional  # noqa: F401

        extra = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout,
                                **extra)
        atexit.register(_destroy_group)
        return context

    # ------------------------------------------------------------------ who is who

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process trains (only then does anything communicate)."""
        return self.world_size > 1

    def describe(self) -> str:
        """``"1 process"`` or ``"N processes (backend)"``, for logs."""
        if not self.is_distributed:
            return "1 process"
        return f"{self.world_size} processes ({self.backend})"

    # ------------------------------------------------------------------ data

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch: a contiguous block of ``indices``.

        Parameters
        ----------
        indices : Tensor
            ``[b]``, the global batch (the same on every process).

        Returns
        -------
        Tensor
            ``[b_rank]``, a view of ``indices``: the blocks of the ranks, in order, tile it
            exactly; the first ``b % world_size`` ranks take ``b // world_size + 1``
            samples, the others ``b // world_size`` (possibly none).
        """
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise TypeError(f"indices: expected a 1-D tensor, got {type(indices).__name__}"
                            + (f" of shape {list(indices.shape)}" if isinstance(indices, torch.Tensor) else ""))
        if not self.is_distributed:
            return indices
        return indices.tensor_split(self.world_size)[self.rank]

    # ------------------------------------------------------------------ collectives

    def _group(self):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"rank {self.rank} of {self.world_size}: torch.distributed is not initialised (or "
                               "already shut down); make the context with DistributedContext.from_environment()")
        return dist

    def broadcast_parameters(self, model: torch.nn.Module, *, bucket_bytes: int = BUCKET_BYTES) -> None:
        """Copy rank 0's parameters and buffers into ``model`` on every process (in place).

        Parameters
        ----------
        model : nn.Module
            The same architecture on every process.
        bucket_bytes : int
            Bytes per broadcast (tensors are flattened into buckets of about this size).
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        check_int("bucket_bytes", bucket_bytes, minimum=1)
        if not self.is_distributed:
            return
        dist = self._group()
        tensors = [p.data for p in model.parameters()] + list(model.buffers())
        with torch.no_grad():
            for bucket in _buckets(tensors, bucket_bytes):
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.broadcast(flat, src=0)
                _unflatten_into(flat, bucket)

    def all_reduce_gradients(
        self,
        model: torch.nn.Module,
        weight: float,
        extra: torch.Tensor | None = None,
        *,
        bucket_bytes: int = BUCKET_BYTES,
    ) -> torch.Tensor | None:
        """Replace every gradient of ``model`` by the ``weight``-weighted sum over the processes.

        Each process passes ``weight`` = its shard's samples / the global batch's samples, so
        that for losses that are means over the batch the result is the global batch's
        gradient on every process (a process with an empty shard passes 0 and may have no
        gradients). The gradients are flattened into buckets of about ``bucket_bytes`` (per
        device and dtype), one all-reduce each, after one small all-reduce that agrees on
        which parameters have gradients and sums ``extra``. A parameter without a gradient
        on any process keeps ``grad = None``; one with a gradient somewhere gets the sum
        everywhere (zeros standing in for the processes without).

        Parameters
        ----------
        model : nn.Module
            After ``backward``.
        weight : float
            This process's share of the global batch, in ``[0, 1]``.
        extra : Tensor, optional
            ``[k]`` numbers to sum over the processes along the way (e.g. the losses, already
            weighted).

        Returns
        -------
        Tensor or None
            ``[k]`` float64 on the CPU: ``extra`` summed over the processes (``extra`` itself
            for one process); None without ``extra``.
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        weight = check_float("weight", weight, nonnegative=True, maximum=1.0)
        check_int("bucket_bytes", bucket_bytes, minimum=1)
        if extra is not None:
            if not isinstance(extra, torch.Tensor) or extra.dim() != 1 or not extra.is_floating_point():
                raise TypeError("extra: expected a 1-D floating-point tensor"
                                + (f", got shape {list(extra.shape)} {extra.dtype}" if isinstance(extra, torch.Tensor)
                                   else f", got {type(extra).__name__}"))
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError("model: sparse gradients are not supported in distributed training")
        if not self.is_distributed:
            if weight != 1.0:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(weight)
            return None if extra is None else extra.detach().to("cpu", torch.float64)
        dist = self._group()
        n = len(params)
        k = 0 if extra is None else len(extra)
        head = torch.zeros(n + k, dtype=torch.float64)
        head[:n] = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
        if extra is not None:
            head[n:] = extra.detach().to("cpu", torch.float64)
        head = head.to(self.device)
        dist.all_reduce(head)
        present = (head[:n] > 0).tolist()
        reduced = []
        for p, there in zip(params, present):
            if there:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                reduced.append(p.grad)
        with torch.no_grad():
            for bucket in _buckets(reduced, bucket_bytes):
                flat = torch.cat([g.reshape(-1) for g in bucket])
                if weight != 1.0:
                    flat.mul_(weight)
                dist.all_reduce(flat)
                _unflatten_into(flat, bucket)
        return None if extra is None else head[n:].to("cpu")

    def agree_elapsed(self, seconds: float) -> float:
        """The largest of every process's ``seconds`` (elapsed training time, s), so that
        every process takes the same decisions from it (the time budget, the schedule)."""
        seconds = check_float("seconds", seconds, nonnegative=True)
        if not self.is_distributed:
            return seconds
        dist = self._group()
        value = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process (pickled; the others' ``obj`` is ignored)."""
        if not self.is_distributed:
            return obj
        dist = self._group()
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every process's ``obj``, by rank (pickled): ``[obj]`` for one process."""
        if not self.is_distributed:
            return [obj]
        dist = self._group()
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, mine: T, differ: Callable[[T, T, int], str | None], message: Callable[[int, str], str]) -> T:
        """Check that every process holds the same ``mine``; returns rank 0's.

        ``differ(rank0s, theirs, rank)`` says how the value of process ``rank`` differs from rank 0's (None: they
        agree). The first difference raises, on every process alike (:func:`mark_agreed`),
        ``ValueError(message(rank, difference))``. One process: returns ``mine``, comparing nothing.
        """
        if not self.is_distributed:
            return mine
        everyone = self.all_gather_object(mine)
        first = everyone[0]
        for rank, theirs in enumerate(everyone):
            diff = differ(first, theirs, rank)
            if diff is not None:
                err = ValueError(message(rank, diff))
                mark_agreed(err)
                raise err
        return first

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` on rank 0 only and give its result to every process.

        If ``fn`` raises on rank 0, every process raises that error (rank 0 the original,
        the others a copy), so they stop together instead of waiting for each other. Its
        result must pickle.
        """
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        if not self.is_distributed:
            return fn()
        error = None
        outcome: tuple = ("value", None)
        if self.is_main:
            try:
                outcome = ("value", fn())
            except Exception as err:  # noqa: BLE001 - handed to every process, then raised
                error = err
                outcome = ("error", _portable(err))
        outcome = self.broadcast_object(outcome)
        if outcome[0] == "error":
            raised = error if error is not None else outcome[1]
            mark_agreed(raised)
            raise raised
        return outcome[1]

    def barrier(self) -> None:
        """Wait until every process gets here (at most :func:`collective_timeout` seconds)."""
        if self.is_distributed:
            self._group().barrier()

    # ------------------------------------------------------------------ failures and the end

    @contextlib.contextmanager
    def failure_guard(self) -> Iterator[None]:
        """On an error inside the block, report ``rank R of N failed: ...`` on stderr, leave
        the process group (the others' pending collectives then fail at once instead of
        waiting for this process) and re-raise.

        Errors that every process raises together, at the same point (:meth:`run_on_main`;
        the trainer's non-finite losses and data checks), pass through untouched: nobody is
        left waiting, and the group stays usable. Does nothing for one process; an error is
        reported once however many guards it passes.
        """
        try:
            yield
        except BaseException as err:
            if (self.is_distributed and not getattr(err, "_manifoldtrain_handled", False)
                    and not getattr(err, "_manifoldtrain_agreed", False)):
                with contextlib.suppress(AttributeError, TypeError):
                    err._manifoldtrain_handled = True
                if not isinstance(err, KeyboardInterrupt):  # Ctrl-C reaches every rank: not one's failure
                    print(f"manifoldtrain: rank {self.rank} of {self.world_size} failed: {type(err).__name__}: {err}",
                          file=sys.stderr, flush=True)
                self.shutdown()
            raise

    def shutdown(self) -> None:
        """Destroy the process group, if this context's processes have one; safe to repeat."""
        if self.is_distributed:
            _destroy_group()


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mark_agreed(err: BaseException) -> None:
    """Mark an error that every process raises together (not one rank's failure):
    :meth:`DistributedContext.failure_guard` then reports it once, not as one rank's."""
    with contextlib.suppress(AttributeError, TypeError):
        err._manifoldtrain_agreed = True


def _portable(err: Exception) -> Exception:
    """``err`` if it survives pickling, else a RuntimeError that carries its type and message."""
    try:
        copy = pickle.loads(pickle.dumps(err))
        if type(copy) is type(err) and str(copy) == str(err):
            return err
    except Exception:  # noqa: BLE001 - any failure to round-trip means: send the text
        pass
    return RuntimeError(f"{type(err).__name__}: {err}")


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """``tensors`` in order, grouped by device and dtype into lists of about ``bucket_bytes``
    (a larger tensor is a bucket of its own)."""
    groups: dict[tuple, list[list[torch.Tensor]]] = {}
    sizes: dict[tuple, int] = {}
    for t in tensors:
        key = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        if key not in groups or (sizes[key] + nbytes > bucket_bytes and groups[key][-1]):
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(t)
        sizes[key] += nbytes
    return [bucket for buckets in groups.values() for bucket in buckets if bucket]


def _unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy consecutive pieces of ``flat`` back into ``tensors`` (in place)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
