"""Torch threads that fit the cores other work leaves idle.

On a shared machine a torch thread whose core is busy with other work stalls every parallel
region it takes part in: measured on our 2-core VM, a 3x256 MLP training step ran at 6-8
steps/s on 2 threads with one of the 2 cores busy, and at 100 steps/s on 1 thread. The
command line therefore keeps torch to the idle cores while a command runs, unless
``--threads`` (or ``OMP_NUM_THREADS``) says how many to use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def load_average(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other work now: the non-idle share of all CPUs over ``seconds`` while
    this process sleeps (``/proc/stat``; the 1-minute load average would count the work just
    before, such as the install in the README's one-liner). ``None`` where unknown."""
    def idle_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = idle_total()
        time.sleep(seconds)
        idle1, total1 = idle_total()
    except (OSError, ValueError, IndexError):  # not Linux
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


def busy(load: float | None, cpus: int | None, threads: int) -> bool:
    """Whether other work (``load`` busy cores) leaves fewer than ``threads`` of the ``cpus`` idle."""
    return load is not None and bool(cpus) and load + threads > cpus + 0.5


def threads_for(load: float | None, cpus: int | None, threads: int) -> int:
    """Torch threads that fit the idle cores: ``threads``, unless other work keeps some of the
    ``cpus`` busy (``load``), then as many as are idle (at least 1)."""
    if not busy(load, cpus, threads):
        return threads
    return max(1, min(threads, cpus - int(round(load))))


@contextmanager
def idle_core_threads(note: Callable[[str], None], *, seconds: float = 0.25,
                      measure: Callable[[float], float | None] | None = None) -> Iterator[int]:
    """Run the block on :func:`threads_for` torch threads (the thread count is given back
    afterwards), saying so through ``note`` when that is fewer than torch's; yields the count.

    ``measure`` (default :func:`load_average`) reads the busy cores over ``seconds``.
    """
    threads, cpus = torch.get_num_threads(), os.cpu_count()
    load = (measure or load_average)(seconds) if threads > 1 else None
    fitted = threads_for(load, cpus, threads)
    if fitted == threads:
        yield threads
        return
    note(f"note: other work keeps about {load:.1f} of the {cpus} cores busy; torch uses {fitted} thread"
         f"{'s' if fitted > 1 else ''} instead of {threads} while this runs (a thread on a busy core stalls every "
         "step; --threads N chooses)")
    torch.set_num_threads(fitted)
    try:
        yield fitted
    finally:
        torch.set_num_threads(threads)
