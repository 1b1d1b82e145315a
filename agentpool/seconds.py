"""Numbers of seconds as callers give them, and as messages show them: one reading for every
option that takes seconds (submit's `expires` and `task_timeout`, `Retry`'s delay, a task
program's `retry_after`)."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal

SHOWN_CHARS = 40


def as_seconds(value: object) -> float | None:
    """`value` as a finite float, or None when it is no number of seconds: a bool, a string,
    NaN, an infinity, an int past a float's range. Any real number counts (int, float,
    Fraction, Decimal, numpy's); -0.0 reads as 0.0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Decimal):
        return None
    try:
        seconds = float(value)
    except (OverflowError, ValueError):
        return None
    return seconds + 0.0 if math.isfinite(seconds) else None


def seconds_text(seconds: float) -> str:
    """Seconds as a person writes them, to the millisecond the protocol stores: 30, 0.05,
    2000000 (no exponent, no trailing .0)."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def given_text(seconds: float) -> str:
    """Seconds as given, every digit kept, without a trailing '.0': 30, 0.0004, 604800.5."""
    return repr(seconds).removesuffix(".0")


def short_repr(value: object) -> str:
    """Any value for an error message, in one short line (the repr of an int of thousands of
    digits cannot even be made)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too large to show"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
