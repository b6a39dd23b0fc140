"""Argument checks shared by the library: every error names the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_tensor(
    name: str,
    x: object,
    *,
    shape: Sequence[int | None] | None = None,
    float_dtype: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given shape (``None`` = any size).

    Raises
    ------
    TypeError
        If ``x`` is not a tensor, or ``float_dtype`` and its dtype is not float32/float64.
    ValueError
        If the shape differs, or ``finite`` and ``x`` holds NaN or inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if float_dtype and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if shape is not None:
        ok = x.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, x.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN or infinite entries")
    return x


def first_non_finite(x: torch.Tensor) -> int | None:
    """The first index along dim 0 of ``x`` whose entries include a NaN or an infinity, or None.

    One sum decides the common case (a finite sum means finite entries: a NaN or an infinity
    makes any sum non-finite); only a non-finite sum (an overflow, or a bad entry) looks
    further."""
    if not x.is_floating_point() or x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return None
    bad = (~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero()
    return int(bad[0]) if len(bad) else None


def non_finite_sample(jet) -> tuple[str, int] | None:
    """``(component, sample)``: the first component of a Jet (``"value"``, ``"d1"``, ``"d2"``)
    holding a NaN or an infinity, and the first such sample in it; None if all are finite."""
    for name, t in zip(("value", "d1", "d2"), jet.components()):
        bad = first_non_finite(t)
        if bad is not None:
            return name, bad
    return None


def check_int(name: str, x: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``x`` is an int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {x}")
    return x


def check_float(
    name: str,
    x: object,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    maximum: float | None = None,
) -> float:
    """Check that ``x`` is a finite real number (int or float, not bool) and return it as float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name}: expected a finite number, got {x}")
    if positive and x <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {x}")
    if nonnegative and x < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name}: expected a number <= {maximum}, got {x}")
    return x


def check_cpu_generator(name: str, value: object) -> None:
    """``value`` is None or a ``torch.Generator`` on the CPU (random directions and
    perturbations are drawn on the CPU, the same on every device, then moved to the data's)."""
    if value is None:
        return
    if not isinstance(value, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(value).__name__}")
    if value.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU torch.Generator (draws are made on the CPU and moved to the "
                         f"data's device), got one on {value.device}")


def attrs_validator(check, **kwargs):
    """Turn one of the checks above into an attrs field validator (the field name is the argument name)."""

    def validate(instance, attribute, value):
        check(attribute.name, value, **kwargs)

    return validate


#: The storage and training dtypes by name (configs, the command line, files).
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_from_name(name: str, value: object) -> torch.dtype:
    """The dtype called ``value`` (``"float32"`` or ``"float64"``); ``name`` is the argument."""
    if value not in DTYPES:
        raise ValueError(f"{name}: expected one of {sorted(DTYPES)}, got {value!r}")
    return DTYPES[value]


def dtype_name(name: str, dtype: object) -> str:
    """The name of a float32/float64 ``dtype``; ``name`` is the argument."""
    for key, value in DTYPES.items():
        if dtype == value:
            return key
    raise TypeError(f"{name}: expected torch.float32 or torch.float64, got {dtype}")


def check_levels(name: str, levels) -> tuple[float, ...]:
    """Check a sequence of noise levels, budgets or strengths (a lone number is one): finite and
    >= 0; returned as a tuple of floats."""
    if isinstance(levels, (int, float)):
        levels = (levels,)
    try:
        levels = tuple(levels)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of numbers, got {type(levels).__name__}") from None
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected finite numbers >= 0, got {v!r}")
    return tuple(float(v) for v in levels)


def check_names(name: str, value: object, count: int) -> tuple[str, ...]:
    """``value`` as a tuple of ``count`` distinct, non-empty strings (names of outputs, say);
    a ``TypeError`` or ``ValueError`` naming ``name`` otherwise.

    >>> check_names("names", ["a", "a"], 2)
    Traceback (most recent call last):
    ...
    ValueError: names: expected distinct names, got 'a' more than once
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected a tuple of {count} names, got {type(value).__name__}")
    names = tuple(value)
    if len(names) != count or not all(isinstance(v, str) and v for v in names):
        raise ValueError(f"{name}: expected {count} non-empty strings, got {list(names)!r}")
    if len(set(names)) != count:
        twice = ", ".join(repr(v) for v in dict.fromkeys(v for v in names if names.count(v) > 1))
        raise ValueError(f"{name}: expected distinct names, got {twice} more than once")
    return names
