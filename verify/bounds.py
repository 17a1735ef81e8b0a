"""The ranges every number option must fall in, shared by the CLI's callbacks and the library's own
checks, so both refuse the same values (no typer here: the library must not need it)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from exporter.errors import UsageError

DECIMAL_RANGE = (-10, 20)
"""numpy's bound is 1.5 x 10**-decimal: from 1.5e10 (no check at activation scale) down to 1.5e-20 (exact equality
for any value that matters); anything outside is a typo, refused. The CLI, `Tolerance` and the manifest's schema
(exporter/manifest.py, which cannot import this package) take the same range (the CLI took 0..20: hunt 8a)."""
RUNS_RANGE = (1, 100_000)
"""Timed runs: 100000 runs of a 1 ms model take under two minutes; more is a typo, not a benchmark."""
WARMUP_RANGE = (0, 10_000)
SEED_RANGE = (0, 2**32 - 1)
"""What numpy's and torch's seeding both take unchanged."""
def number_problem(value: Any, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, integer: bool = False) -> str | None:
    """Why `value` is not a finite number in [low, high] (or (low, high] with low_open), or None."""
    if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        return f"must be a whole number, got {value!r}"
    if not integer and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        return f"must be a number, got {value!r}"
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if not (below or above):
        return None
    if low is not None and high is not None and not low_open:
        wanted = f"between {_text(low)} and {_text(high)}"
    elif low is not None:
        wanted = f"{'>' if low_open else '>='} {_text(low)}" + (f" and <= {_text(high)}" if high is not None else "")
    else:
        wanted = f"<= {_text(high)}"
    return f"must be {wanted}, got {_text(value)}"


def _text(number: float | None) -> str:
    if isinstance(number, numbers.Integral):
        digits = str(number)
        return digits if len(digits) <= 20 else f"a {len(digits.lstrip('-'))}-digit number"
    return f"{number:g}"


def require_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, integer: bool = False) -> None:
    """UsageError naming the option unless `value` is finite and in range."""
    problem = number_problem(value, low, high, low_open=low_open, integer=integer)
    if problem:
        raise UsageError(f"{name} {problem}")
