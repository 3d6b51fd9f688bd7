"""Deprecated: moved to :mod:`lit_tricks.trainers` (strategies, Hydra-job safety, ``build_trainer``).

Kept so that saved ``.hydra/config.yaml`` files whose ``_target_`` names ``lit_tricks.sweeps.ddp.*`` still
instantiate; every name read here warns with a DeprecationWarning and returns the object from its new home.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: Old name -> the module it lives in now.
_MOVED = {
    "HydraSafeDDPStrategy": "lit_tricks.trainers.strategies",
    "HydraSafeFSDPStrategy": "lit_tricks.trainers.strategies",
    "SHARDING_STRATEGIES": "lit_tricks.trainers.strategies",
    "ddp_strategy": "lit_tricks.trainers.strategies",
    "fsdp_strategy": "lit_tricks.trainers.strategies",
    "scale_learning_rates": "lit_tricks.trainers.strategies",
    "DDP_NAMES": "lit_tricks.trainers.build",
    "build_trainer": "lit_tricks.trainers.build",
    "CHILD_EXIT_TIMEOUT_S": "lit_tricks.trainers.jobs",
    "child_rank_command": "lit_tricks.trainers.jobs",
    "config_hash": "lit_tricks.trainers.jobs",
    "job_guard": "lit_tricks.trainers.jobs",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = _MOVED[name]
    warnings.warn(f"lit_tricks.sweeps.ddp.{name} moved to {new}.{name}; the old path will be removed",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(new), name)
