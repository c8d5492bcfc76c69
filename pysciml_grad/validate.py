"""Checks of the plain numbers and flags a user passes (tolerances, options, sensealg fields).

One definition of "a number" for the whole package: a Python ``int``/``float``, a NumPy
scalar or a 0-d tensor, never a ``bool`` (``True`` is an ``int`` in Python, but
``rtol=True`` is a mistake, not a tolerance). A flag is a ``bool`` (or NumPy ``bool_``)
and nothing else: ``checkpointing="no"`` is truthy, so accepting it would silently turn
the feature *on*. Every failure raises :class:`~pysciml_grad.errors.InvalidProblemError`
naming the argument, the value and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from .errors import InvalidProblemError


def as_number(name: str, value: Any) -> float:
    """``value`` as a Python float, or InvalidProblemError if it is not a real number."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidProblemError(f"{name} must be a number, got the bool {value!r}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise InvalidProblemError(f"{name} must be a number or a 0-d tensor, got a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise InvalidProblemError(f"{name} must be a real number, got a tensor of dtype {value.dtype}")
        return float(value.detach())
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise InvalidProblemError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def positive_finite(name: str, value: Any) -> float:
    x = as_number(name, value)
    if not (x > 0 and math.isfinite(x)):
        raise InvalidProblemError(f"{name} must be a positive finite number, got {value!r}")
    return x


def nonnegative_finite(name: str, value: Any) -> float:
    x = as_number(name, value)
    if not (x >= 0 and math.isfinite(x)):
        raise InvalidProblemError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def positive_or_inf(name: str, value: Any) -> float:
    """A positive bound where ``inf`` means "no bound" (``max_step``)."""
    x = as_number(name, value)
    if not x > 0:  # NaN fails too
        raise InvalidProblemError(f"{name} must be a positive number (inf: no bound), got {value!r}")
    return x


def in_range(name: str, value: Any, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    x = as_number(name, value)
    ok_lo = x > lo if lo_open else x >= lo
    ok_hi = x < hi if hi_open else x <= hi
    if not (ok_lo and ok_hi and math.isfinite(x)):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise InvalidProblemError(f"{name} must lie in {interval}, got {value!r}")
    return x


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidProblemError(f"{name} must be a positive integer, got the bool {value!r}")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0 and not value.is_floating_point():
        value = int(value)
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidProblemError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidProblemError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def optional(check, name: str, value: Any) -> Optional[Any]:
    return None if value is None else check(name, value)
