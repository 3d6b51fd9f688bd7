"""Fault tolerance: atomic checkpoint writes, exact resume, preemption handling.

Callbacks live in ``lit_tricks.callbacks`` (NaNGuard, RNGState, Preemption); this package holds the plugin and the
pure pieces they use.
"""

from __future__ import annotations

from typing import Any

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


def trainer_plugins() -> list[Any]:
    """The plugins every lit_tricks Trainer gets: ``Trainer(plugins=trainer_plugins())`` (atomic checkpoint IO)."""
    return [AtomicCheckpointIO()]
