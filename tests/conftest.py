import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The thread count is chosen here: the command line keeps it (it would fit torch to the idle
# cores, spending 0.25 s a command to measure them, and runs compared with in-process ones
# could then differ in their last bits on a machine that other work keeps busy).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

settings.register_profile("default", deadline=None, max_examples=10, derandomize=False, print_blob=True)
settings.register_profile("ci", deadline=None, max_examples=10, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
# The examples' own pieces (a user's term, metric, manifold) are tested as users would import them.
sys.path.insert(0, str(ROOT / "examples"))
DATA = Path(__file__).resolve().parent / "data"


def requires_cuda(test):
    """Mark a test ``cuda`` (``pytest -m cuda`` runs them all on a GPU machine) and skip it
    where no CUDA device is visible."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))
