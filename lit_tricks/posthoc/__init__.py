"""Choices made after training, from files a run left: an EMA of any length synthesized from
:class:`~lit_tricks.callbacks.PostHocEMA` snapshots (:mod:`lit_tricks.posthoc.ema`), greedy and uniform soups of a
run's snapshot members or of a sweep's members (:mod:`lit_tricks.posthoc.soup`), each evaluated on the validation
split with BatchNorm recalibrated (:mod:`lit_tricks.posthoc.evaluate`).

This package imports nothing on its own: its public names load their submodule when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PostHocEMAEvaluation", "posthoc_ema_report", "reconstruct_posthoc_ema"]

_HOME = {"PostHocEMAEvaluation": "ema", "posthoc_ema_report": "ema", "reconstruct_posthoc_ema": "ema"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
