"""Argument checks shared by every layer: clear ``ValueError`` messages that say what was
received.  Used for input validation instead of ``assert``."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_int", "check_nonneg", "check_spacing"]


def check_int(name: str, value, low: int = 0) -> int:
    """*value* as an int, or ``ValueError`` unless it is an integer (not a bool) >= *low*."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; received {value!r}")
    return int(value)


def check_nonneg(value, name: str) -> float:
    """*value* as a float, or ``ValueError`` unless it is a finite number >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0; received {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; received {value!r}")
    return v


def check_spacing(spacing_mm) -> tuple[float, float, float]:
    """Voxel spacing ``(dz, dy, dx)`` in mm as 3 positive finite floats, or ``ValueError``."""
    try:
        sp = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(
            "spacing_mm must be a sequence of 3 positive floats (dz, dy, dx); "
            f"received {spacing_mm!r}"
        ) from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            "spacing_mm must be 3 positive finite floats (dz, dy, dx) in mm; "
            f"received {spacing_mm!r}"
        )
    return sp  # type: ignore[return-value]
