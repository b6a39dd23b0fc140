"""Jets of a manifold as a data set in memory: :class:`JetDataset`, its generation
(:func:`generate_jets`), and the provenance and fingerprint that identify the data."""

from __future__ import annotations


import attrs
import torch

from manifoldtrain._plain import digest, first_difference, plain
from manifoldtrain._validation import check_int, check_tensor, dtype_name, first_non_finite, non_finite_sample
from manifoldtrain.data.format import FORMAT, FORMAT_VERSION
from manifoldtrain.jet import Jet
from manifoldtrain.manifold import Manifold, check_is_manifold


def check_finite_points(points: torch.Tensor, what: str, *, first: int = 0) -> None:
    """Refuse points holding NaN or infinite values before they are stored (as the jets)."""
    bad = first_non_finite(points)
    if bad is not None:
        raise ValueError(f"{what} point {first + bad} holding NaN or infinite values; a jet cache stores finite "
                         "points and jets only")


def check_finite_jets(inputs: Jet, targets: Jet, what: str, *, first: int = 0, points: torch.Tensor | None = None) -> None:
    """Refuse jets that hold NaN or infinite values before they are stored (a cache holds
    finite points and jets only, so that a non-finite value read back means a damaged file)."""
    for prefix, jet in (("input", inputs), ("target", targets)):
        found = non_finite_sample(jet)
        if found is not None:
            name, bad = found
            at = "" if points is None else f" (point {[round(v, 6) for v in points[bad].reshape(-1).tolist()]})"
            raise ValueError(f"{what} the {prefix} {name} of sample {first + bad}{at} holds NaN or infinite values; "
                             "a jet cache stores finite values only")


def manifold_description(manifold: Manifold) -> dict:
    """Class and settings of a manifold, as canonical JSON-able data
    (:func:`manifoldtrain._plain.plain`: attrs fields, tensors by content hash)."""
    settings = plain(manifold)
    return {"class": settings.pop("kind"), "settings": settings}


def provenance(manifold: Manifold, n: int, seed: int, order: int, dtype: torch.dtype, compute_dtype: torch.dtype) -> dict:
    """What makes a generated data set what it is (JSON-able)."""
    return {
        "manifold": manifold_description(manifold),
        "n": n,
        "seed": seed,
        "order": order,
        "dtype": dtype_name("dtype", dtype),
        "compute_dtype": dtype_name("compute_dtype", compute_dtype),
    }


def fingerprint(manifold: Manifold, n: int, seed: int, order: int, dtype: torch.dtype, compute_dtype: torch.dtype) -> str:
    """SHA-256 (hex) identifying a generated data set: manifold settings, size, seed, order, dtypes."""
    check_is_manifold("manifold", manifold)
    return digest({"format": FORMAT, "version": FORMAT_VERSION, **provenance(manifold, n, seed, order, dtype, compute_dtype)})


@attrs.frozen(eq=False)
class JetDataset:
    """Points with the jets of the manifold's input and target there.

    Attributes
    ----------
    points : Tensor
        ``[n, *point_shape]``.
    inputs, targets : Jet
        ``value [n, ...]``, ``d1 [n, d, ...]``, ``d2 [n, d(d+1)/2, ...]``.
    meta : dict
        Where the data came from (manifold, seed, fingerprint), JSON-able.
    """

    points: torch.Tensor
    inputs: Jet
    targets: Jet
    meta: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        n = self.points.shape[0]
        if len(self.inputs) != n or len(self.targets) != n:
            raise ValueError(
                f"inputs, targets: expected {n} samples like points, got {len(self.inputs)} and {len(self.targets)}"
            )
        if self.inputs.order != self.targets.order:
            raise ValueError(f"targets: expected order {self.inputs.order} like inputs, got {self.targets.order}")

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def order(self) -> int:
        return self.inputs.order

    def subset(self, index: torch.Tensor | slice) -> JetDataset:
        """The samples at ``index`` (a slice or an index tensor)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.points.device)
        return JetDataset(self.points[index], self.inputs[index], self.targets[index], dict(self.meta))

    def split(self, n_test: int, seed: int) -> tuple[JetDataset, JetDataset]:
        """``(train, test)``: a random ``n_test`` samples for testing, the rest for training.

        The permutation comes from ``torch.Generator().manual_seed(seed)``: the same seed gives
        the same split.
        """
        check_int("n_test", n_test, minimum=0, maximum=len(self))
        train, test = split_index(len(self), n_test, seed)
        return self.subset(train), self.subset(test)

    def to(self, *args, **kwargs) -> JetDataset:
        """Move or cast every array, as :meth:`torch.Tensor.to`."""
        return JetDataset(self.points.to(*args, **kwargs), self.inputs.to(*args, **kwargs), self.targets.to(*args, **kwargs), dict(self.meta))


def split_index(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)``: the sorted indices :meth:`JetDataset.split` gives ``n`` samples.

    ``test`` is a random ``n_test`` of ``range(n)`` drawn with
    ``torch.Generator().manual_seed(seed)``, ``train`` the rest; both are int64 ``[k]``.
    With :func:`generate_jets`' ``index`` it renders one side of a split alone (e.g. a test
    set at a higher order than the training set).

    >>> train, test = split_index(5, 2, seed=0)
    >>> sorted(train.tolist() + test.tolist())
    [0, 1, 2, 3, 4]
    """
    check_int("n", n, minimum=0)
    check_int("n_test", n_test, minimum=0, maximum=n)
    check_int("seed", seed, minimum=0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def generate_jets(
    manifold: Manifold,
    n: int,
    *,
    seed: int = 0,
    order: int = 2,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float64,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
    index: torch.Tensor | None = None,
) -> JetDataset:
    """Draw ``n`` points with ``seed`` and compute their jets in batches, with a progress bar.

    Jets are computed in ``compute_dtype`` (default float64) and stored in ``dtype``
    (default float32, relative error ~1e-7 on the stored jets), on ``device`` (default CPU).
    Jets holding NaN or infinite values (in ``dtype``) are refused with a ValueError naming
    the sample and its point.

    ``index`` (int64 ``[k]``, entries in ``[0, n)``) computes the jets of those of the ``n``
    drawn points alone, at the cost of ``k`` samples (e.g. one side of :func:`split_index`):
    the result is ``generate_jets(manifold, n, ...).subset(index)``, the same points and meta,
    with jets equal to float64 rounding before they are stored in ``dtype`` (the batches
    differ, so an entry may differ in its last bit of ``dtype``).
    """
    from tqdm.auto import tqdm

    check_is_manifold("manifold", manifold)
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("order", order, minimum=0, maximum=2)
    check_int("batch_size", batch_size, minimum=1)
    dtype_name("dtype", dtype)
    dtype_name("compute_dtype", compute_dtype)
    if index is not None:
        check_tensor("index", index, shape=[None], float_dtype=False, finite=False)
        if index.dtype != torch.int64:
            raise TypeError(f"index: expected dtype int64, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"index: expected entries in [0, {n}) (n), got {int(index.min())} to {int(index.max())}")
    points = manifold.sample(n, torch.Generator().manual_seed(seed), dtype=compute_dtype, device=device)
    if index is not None:
        points = points[index.to(points.device)]
    check_finite_points(points.to(dtype), f"{type(manifold).__name__}.sample gave")
    parts_in: list[list[torch.Tensor]] = []
    parts_out: list[list[torch.Tensor]] = []
    with tqdm(total=len(points), desc=f"jets of {type(manifold).__name__}", unit="sample", disable=not progress, leave=False) as bar:
        for k, chunk in enumerate(points.split(batch_size)):
            x, y = manifold.jets(chunk, order)
            parts_in.append([c.to(dtype) for c in x.components()])
            parts_out.append([c.to(dtype) for c in y.components()])
            check_finite_jets(Jet(*parts_in[-1]), Jet(*parts_out[-1]), f"{type(manifold).__name__}.jets gave",
                               first=k * batch_size, points=chunk)
            bar.update(len(chunk))
    inputs = Jet(*(torch.cat(c) for c in zip(*parts_in)))
    targets = Jet(*(torch.cat(c) for c in zip(*parts_out)))
    meta = {
        **provenance(manifold, n, seed, order, dtype, compute_dtype),
        "fingerprint": fingerprint(manifold, n, seed, order, dtype, compute_dtype),
    }
    return JetDataset(points.to(dtype), inputs, targets, meta)


def check_dataset(name: str, data: object, *, order: int | None = None) -> JetDataset:
    """Check that ``data`` is a :class:`JetDataset` (of at least ``order``)."""
    if not isinstance(data, JetDataset):
        raise TypeError(f"{name}: expected a JetDataset, got {type(data).__name__}")
    if order is not None and data.order < order:
        raise ValueError(f"{name}: expected jets of order >= {order}, got order {data.order}")
    check_tensor(f"{name}.points", data.points, finite=False)
    return data


# ============================================================================ sharded caches


def check_cache_matches(data: JetDataset, manifold: Manifold, argument: str, path) -> None:
    """Raise ``ValueError`` naming ``argument`` and the first differing setting unless the jet
    cache ``data`` (loaded, or a :class:`~manifoldtrain.data.JetCache`: anything with the
    cache's ``meta``) was generated from ``manifold`` with the same settings."""
    diff = first_difference(data.meta.get("manifold"), manifold_description(manifold), "manifold",
                            ("in the cache", "now"))
    if diff is not None:
        raise ValueError(
            f"{argument}: {path} was generated from another manifold or settings ({diff}); "
            "generate it with the run's manifold settings"
        )
