"""ModelCheckpoint: Lightning's, whose checkpoints all resume exactly."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from lit_tricks.compat import apply_pending_train_loader_state, batch_end_is_resumable

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments, files and ``state_key``) with two resume fixes.

    - A step checkpoint (``every_n_train_steps``, ``train_time_interval``) due at a batch that a validation or the
      epoch end follows is written right after that validation (``on_validation_end``), or at the epoch end when no
      validation runs, instead of at the batch end: Lightning resumes a batch-end checkpoint as if that validation
      and that epoch end had run, so a run killed after such a checkpoint would skip them (see
      :func:`lit_tricks.compat.batch_end_is_resumable`). ``last.ckpt`` written every step thus always resumes
      exactly.
    - ``current_score`` (the monitored value of the last check) is restored with the rest of the state.
    - A fit resumed from one of its checkpoints starts at the saved data position also when the train loader was
      built before the restore (:func:`lit_tricks.compat.apply_pending_train_loader_state`, Lightning #20550).
    """

    _deferred_step_save = False  # a step save due at a batch end that is no exact resume point (per instance once set)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # the checkpoint's data position, when the loader was built before the restore (once: RNGState may have
        # applied it already, before restoring the RNG that creating the iterator draws from)
        apply_pending_train_loader_state(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_end_is_resumable(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif self._step_save_due(trainer):
            self._deferred_step_save = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._save_deferred(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_deferred(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.current_score = state_dict.get("current_score", self.current_score)

    def _step_save_due(self, trainer: pl.Trainer) -> bool:
        """Lightning's step/time trigger of ``on_train_batch_end`` (the time check is rank 0's, as there)."""
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        interval = self._train_time_interval
        if interval is not None:
            now = time.monotonic()
            last = self._last_time_checked
            time_due = bool(trainer.strategy.broadcast(last is not None and now - last >= interval.total_seconds()))
            if time_due:
                self._last_time_checked = now
            due = due or time_due
        return due

    def _save_deferred(self, trainer: pl.Trainer) -> None:
        if not self._deferred_step_save:
            return
        self._deferred_step_save = False
        if not self._should_skip_saving_checkpoint(trainer):  # nothing saved at this step yet
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
