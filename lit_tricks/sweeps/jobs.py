"""Deprecated: moved to :mod:`lit_tricks.trainers.jobs`; every name read here warns with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {"sweep_failure_value": "lit_tricks.trainers.jobs", "sweeper_target": "lit_tricks.trainers.jobs"}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = _MOVED[name]
    warnings.warn(f"lit_tricks.sweeps.jobs.{name} moved to {new}.{name}; the old path will be removed",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(new), name)
