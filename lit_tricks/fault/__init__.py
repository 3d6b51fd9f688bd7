"""Fault tolerance: atomic checkpoint writes, exact resume, preemption handling.

Callbacks live in ``lit_tricks.callbacks`` (NaNGuard, RNGState, Preemption); this package holds the plugin and the
pure pieces they use. It imports nothing on its own: its public names load their submodule when first used (PEP
562), so ``lit_tricks.fault.atomic`` (torch only) does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError, clean_stale_temp_files
    from lit_tricks.fault.resume import checkpoint_is_intact, find_resume_checkpoint, is_training_checkpoint
    from lit_tricks.fault.rng import collect_rng_states, restore_rng_states

__all__ = [
    "AtomicCheckpointIO",
    "CorruptCheckpointError",
    "checkpoint_is_intact",
    "clean_stale_temp_files",
    "collect_rng_states",
    "find_resume_checkpoint",
    "is_training_checkpoint",
    "restore_rng_states",
    "trainer_plugins",
]

_HOME = {
    "AtomicCheckpointIO": "checkpoint_io",
    "CorruptCheckpointError": "checkpoint_io",
    "clean_stale_temp_files": "checkpoint_io",
    "checkpoint_is_intact": "resume",
    "find_resume_checkpoint": "resume",
    "is_training_checkpoint": "resume",
    "collect_rng_states": "rng",
    "restore_rng_states": "rng",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def trainer_plugins() -> list[Any]:
    """The plugins every lit_tricks Trainer gets: ``Trainer(plugins=trainer_plugins())`` (atomic checkpoint IO)."""
    from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO

    return [AtomicCheckpointIO()]
