"""RNGState: the RNG states (torch, CUDA, numpy, python) of every rank travel in the checkpoint, with the rest of what
an exact resume needs beyond Lightning's own checkpoint (:mod:`lit_tricks.fault.exact_resume`).

With a resumable data position (``torchdata``'s ``StatefulDataLoader``), restoring them makes a mid-epoch resume draw
the same dropout masks and augmentations as the uninterrupted run. Lightning alone saves no RNG state.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from lit_tricks.compat import apply_pending_train_loader_state, restart_train_iterator
from lit_tricks.fault.exact_resume import (
    CSV_ROWS_KEY,
    capture_loop_values,
    csv_log_rows,
    restore_loop_values,
    run_skipped_epoch_start,
)
from lit_tricks.fault.rng import collect_rng_states, restore_rng_states
from lit_tricks.fault.state_keys import cached_state_key

__all__ = ["RNGState"]

log = logging.getLogger(__name__)

STATE_VERSION = 1


class RNGState(Callback):
    """Save each rank's RNG states with every checkpoint and restore them when training resumes: the callback that
    makes stop-and-resume equal the uninterrupted run (see docs/parts/reliability.md for what is bit-exact).

    The states are captured when the checkpoint is written (on every rank: all ranks gather theirs, rank 0 writes
    them) and set back at ``on_train_start`` of the resumed fit, after the dataloaders were built and restored, just
    before the first batch is fetched. When the world size changed, rank ``r`` takes saved rank ``r % saved``.
    ``include_cuda``: also save the CUDA generators.

    With them travel, per rank, what the training epoch has logged so far and the values callbacks read
    (:func:`lit_tricks.fault.exact_resume.capture_loop_values`), and, for the CSV logger, the number of rows written
    before the checkpoint. At ``on_train_start`` it first gives the train loader the checkpoint's data position when
    Lightning did not (:func:`lit_tricks.compat.apply_pending_train_loader_state`).
    """

    def __init__(self, include_cuda: bool = True) -> None:
        super().__init__()
        self.include_cuda = include_cuda
        self._pending: dict[str, Any] | None = None
        self._rank = 0
        self._trainer: pl.Trainer | None = None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, include_cuda=self.include_cuda)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._rank = trainer.global_rank
        self._trainer = trainer

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    def state_dict(self) -> dict[str, Any]:
        mine = collect_rng_states(include_cuda=self.include_cuda)
        if self._trainer is not None:
            mine["loop_values"] = capture_loop_values(self._trainer)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            per_rank = [_to_cpu(s) for s in gathered]
        else:
            per_rank = [mine]
        return {"version": STATE_VERSION, "per_rank": per_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank", [])
        if not per_rank:
            return
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else self._rank
        if rank >= len(per_rank):
            log.warning("RNGState: checkpoint has %d rank(s), this is rank %d; using rank %d's states",
                        len(per_rank), rank, rank % len(per_rank))
        self._pending = per_rank[rank % len(per_rank)]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            checkpoint[CSV_ROWS_KEY] = csv_log_rows(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the data position first: creating the loader's iterator again draws from the RNG restored below
        apply_pending_train_loader_state(trainer)
        if self._pending is None:
            run_skipped_epoch_start(trainer)
            return
        restore_rng_states(self._pending)
        new_epoch = _resumes_at_epoch_end(trainer)
        restore_loop_values(trainer, self._pending.get("loop_values", {}), same_epoch=not new_epoch)
        self._pending = None
        run_skipped_epoch_start(trainer)  # the uninterrupted run's epoch start, before that epoch's iterator
        if new_epoch:
            # The uninterrupted run creates the next epoch's train iterator now, after the save; creating one
            # draws its base seed from the RNG. The resumed run created it before the states were restored:
            # create it again so the same draw happens on the same state.
            restart_train_iterator(trainer)


def _resumes_at_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether the resumed fit starts with a new epoch whose train iterator Lightning does not create again: the
    checkpoint was taken after the epoch's batches and its end hooks (``on_train_epoch_end``), or at its last batch
    (which Lightning resumes with the next epoch). Not when it was taken at the end of the epoch's last validation:
    the resumed fit then finishes that epoch first and creates the next epoch's iterator itself. Read at
    ``on_train_start``, after Lightning's fit loop applied its restart rules."""
    epochs: Any = trainer.fit_loop.epoch_progress.current  # a _StartedTracker, typed as its base class
    return bool(epochs.processed >= epochs.started)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
