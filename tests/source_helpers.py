"""Helpers of tests/test_data_sources.py that worker processes import (spawned: by module name)."""

import os

from toy_manifolds import Sphere


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
