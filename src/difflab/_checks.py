"""Type predicates shared by the argument checks: Python and numpy numbers alike, never bool."""

from __future__ import annotations

import numbers

__all__ = ["is_int", "is_real"]


def is_int(x) -> bool:
    """An integer (int, numpy integer), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
