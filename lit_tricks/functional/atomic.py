"""Deprecated: moved to :mod:`lit_tricks.fault.atomic` (file IO is not tensor math); every name read here warns."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NAMES = ("TMP_PREFIX", "atomic_open", "atomic_save_figure", "atomic_torch_save", "atomic_write_bytes")

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"lit_tricks.functional.atomic.{name} moved to lit_tricks.fault.atomic.{name}; the old path will be"
                  " removed", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("lit_tricks.fault.atomic"), name)
