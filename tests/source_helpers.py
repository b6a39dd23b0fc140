"""Helpers of tests/test_data_sources.py (worker processes import them: spawned, by module name) and of
tests/test_troubleshooting.py."""

import os

import numpy as np

from toy_manifolds import Sphere


def overwrite(file, index, value=np.nan):
    """Write ``value`` at ``index`` of the .npy ``file`` in place: damage of the same size, which
    a cache's header and size checks cannot see."""
    arr = np.load(file, mmap_mode="r+")
    arr[index] = value
    arr.flush()
    del arr


class DyingSphere(Sphere):
    """The sphere, whose jets end a worker process (as if it were killed) while the file
    ``flag`` exists, removing it first: exactly one worker dies (never the process that made
    the manifold)."""

    def __init__(self, flag):
        self.flag = str(flag)
        self._parent = os.getpid()

    def __repr__(self):
        return f"DyingSphere({self.flag!r})"

    def jets(self, points, order=2):
        if os.getpid() != self._parent and os.path.exists(self.flag):
            try:
                os.remove(self.flag)
            except FileNotFoundError:  # another worker took it
                return super().jets(points, order)
            os._exit(3)
        return super().jets(points, order)
