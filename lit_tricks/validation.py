"""The one argument checker: every component (callback, module, DataModule, sweeper) validates its own arguments.

Design (one for the whole package): a component checks its constructor arguments with :func:`check_number` /
:func:`check_choice` (or raises :class:`ArgumentError` itself for a rule of its own); the error names the argument,
the allowed values and the value received. ``config_checks`` does not restate those rules: it walks the composed
config, lets each component check its own node, and prefixes the node's key (``callbacks.ema.decay=1.5: ...``); it
keeps only the rules that span several components. :func:`number_problem` returns the text that says what is
allowed (``"must be a number in [0, 1)"``) or None. A component that checks all its arguments at once raises
:class:`ArgumentErrors` (every bad argument, each an :class:`ArgumentError`) through :func:`raise_all`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "DIRECTIONS", "ArgumentError", "ArgumentErrors", "CheckAll", "arg_key", "check_choice", "check_number", "is_int",
    "is_number", "number_problem", "raise_all",
]

#: ``monitor_mode`` (and lit_optuna's ``direction`` aliases) -> Optuna's study direction; the one map, used by the
#: start-up direction check (``config_checks``) and the sweeper (``sweeps.study``).
DIRECTIONS = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}


class ArgumentError(ValueError):
    """A bad argument of one component: ``arg`` (its name), ``value`` (received) and ``problem`` (what is allowed).

    ``str()`` is one line, ``"[<owner>: ]<arg> <problem>, got <value>"``; config checks read the attributes to name
    the full config key instead.
    """

    def __init__(self, arg: str, value: Any, problem: str, owner: str | None = None) -> None:
        self.arg, self.value, self.problem, self.owner = arg, value, problem, owner
        text = f"{arg} {problem}, got {value!r}"
        super().__init__(f"{owner}: {text}" if owner else text)


def arg_key(key: str, err: ArgumentError, node: Any = None) -> str:
    """The config key of ``err``'s argument in the component configured at ``key`` by ``node``: ``<key>.<arg>``, or
    ``<key>.<owner>.<arg>`` when the owner names a mapping of ``node`` (``module.norm.layers`` of
    ``module.norm={kind: batch, layers: [...]}``; a class name as owner is no key)."""
    nested = isinstance(node, Mapping) and isinstance(node.get(err.owner or ""), Mapping)
    return f"{key}.{err.owner}.{err.arg}" if nested else f"{key}.{err.arg}"


class ArgumentErrors(ValueError):
    """Several bad arguments of one component, each an :class:`ArgumentError`; ``str()`` joins them with ``"; "``."""

    def __init__(self, errors: list[ArgumentError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


def raise_all(errors: list[ArgumentError]) -> None:
    """Raise nothing (no error), the one :class:`ArgumentError`, or :class:`ArgumentErrors` for several."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ArgumentErrors(errors)


class CheckAll:
    """Run several checks of one component and report every bad argument at once.

    ``with CheckAll() as checks: x = checks(check_fn, *args)``: a check that raises :class:`ArgumentError` (or
    :class:`ArgumentErrors`) returns None and its errors are kept; leaving the block raises them all
    (:func:`raise_all`).
    """

    def __init__(self) -> None:
        self.errors: list[ArgumentError] = []

    def __call__(self, check: Callable[..., T], *args: Any) -> T | None:
        try:
            return check(*args)
        except ArgumentErrors as many:
            self.errors.extend(many.errors)
        except ArgumentError as one:
            self.errors.append(one)
        return None

    def __enter__(self) -> CheckAll:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            raise_all(self.errors)


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
                 hi_open: bool = True, integer: bool = False, owner: str | None = None) -> float:
    """``float(value)``, or ``ArgumentError("<name> must be a number in [lo, hi), got <value>")``."""
    problem = number_problem(value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
    if problem:
        raise ArgumentError(name, value, problem, owner)
    return float(value)


def check_choice(name: str, value: Any, allowed: Any, owner: str | None = None) -> Any:
    """``value`` when it is one of ``allowed``, or ``ArgumentError("<name> must be one of [...], got <value>")``."""
    options = list(allowed)
    if value not in options:
        raise ArgumentError(name, value, f"must be one of {options}", owner)
    return value
