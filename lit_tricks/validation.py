"""One number checker for user input: config start-up checks, constructor arguments and DataModule options.

:func:`number_problem` returns the text that says what is allowed (``"must be a number in [0, 1)"``) or None;
:func:`check_number` raises it as a ``ValueError`` naming the argument and the value received.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DIRECTIONS", "check_number", "is_int", "is_number", "number_problem"]

#: ``monitor_mode`` (and lit_optuna's ``direction`` aliases) -> Optuna's study direction; the one map, used by the
#: start-up direction check (``config_checks``) and the sweeper (``sweeps.study``).
DIRECTIONS = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def number_problem(value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                   hi_open: bool = True, integer: bool = False) -> str | None:
    """What is wrong with ``value`` as a number (an integer) in the range ``lo .. hi``, or None when it is fine."""
    kind = "an integer" if integer else "a number"
    if not is_number(value) or (integer and not is_int(value)):
        return f"must be {kind}"
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if not (bad_lo or bad_hi):
        return None
    right = ")" if hi_open or hi == math.inf else "]"
    return f"must be {kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{right}"


def check_number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = True, integer: bool = False) -> float:
    """``float(value)``, or ``ValueError("<name> must be a number in [lo, hi), got <value>")``."""
    problem = number_problem(value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
    if problem:
        raise ValueError(f"{name} {problem}, got {value!r}")
    return float(value)
