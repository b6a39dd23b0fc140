"""Hypothesis strategies that draw valid points of a manifold.

Requires the ``hypothesis`` package (``pip install manifoldtrain[test]``).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from manifoldtrain._validation import check_int
from manifoldtrain.manifold import Manifold

__all__ = ["points", "seeds"]


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``torch.Generator().manual_seed`` (shrinks towards 0)."""
    return st.integers(min_value=0, max_value=2**63 - 1)


def points(
    manifold: Manifold,
    n: int | st.SearchStrategy[int] = 1,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> st.SearchStrategy[torch.Tensor]:
    """Batches ``[n, *point_shape]`` drawn from the manifold's own data distribution.

    Each example is ``manifold.sample(n, generator)`` with a generator seeded by hypothesis,
    so examples are valid points by construction and reproducible from hypothesis' database.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from manifoldtrain.manifolds import Cube
    >>> cube = Cube()
    >>> @settings(max_examples=3, deadline=None)
    ... @given(points(cube, n=2))
    ... def test_valid(p):
    ...     assert p.shape == (2, 6)
    ...     cube.check_points(p)
    >>> test_valid()
    """
    sizes = n if isinstance(n, st.SearchStrategy) else st.just(check_int("n", n, minimum=1))

    def draw(args: tuple[int, int]) -> torch.Tensor:
        size, seed = args
        return manifold.sample(size, torch.Generator().manual_seed(seed), dtype=dtype, device=device)

    return st.tuples(sizes, seeds()).map(draw)
