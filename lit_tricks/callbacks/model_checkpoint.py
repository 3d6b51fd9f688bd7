"""ModelCheckpoint: Lightning's, whose checkpoints all resume exactly."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint

from lit_tricks.compat import apply_pending_train_loader_state, batch_end_is_resumable

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments, files and ``state_key``) with these resume fixes.

    - A step checkpoint (``every_n_train_steps``, ``train_time_interval``) due at a batch that a validation or the
      epoch end follows is written right after that validation (``on_validation_end``), or at the epoch end when no
      validation runs, instead of at the batch end: Lightning resumes a batch-end checkpoint as if that validation
      and that epoch end had run, so a run killed after such a checkpoint would skip them (see
      :func:`lit_tricks.compat.batch_end_is_resumable`). ``last.ckpt`` written every step thus always resumes
      exactly.
    - ``current_score`` (the monitored value of the last check) is restored with the rest of the state.
    - A fit resumed from one of its checkpoints starts at the saved data position also when the train loader was
      built before the restore (:func:`lit_tricks.compat.apply_pending_train_loader_state`, Lightning #20550).
    - Resumed with a smaller ``save_top_k`` (>= 1) than the checkpoint's top-k holds, the best ``save_top_k`` of the
      saved ``best_k_models`` stay and the files of the others are removed at train start, as the top-k gives up
      its worst (Lightning keeps them all, and its top-k then grows past ``save_top_k``).
    """

    _deferred_step_save = False  # a step save due at a batch end that is no exact resume point (per instance once set)
    _left_top_k: tuple[str, ...] = ()  # top-k files beyond a smaller save_top_k after a restore (removed at start)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        for path in self._left_top_k:
            if self._should_remove_checkpoint(trainer, path, self.last_model_path):
                self._remove_checkpoint(trainer, path)
        self._left_top_k = ()
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
            self._trim_top_k()

    def _trim_top_k(self) -> None:
        """Give up the worst of ``best_k_models`` (the first among equal ones, as Lightning's ``kth``) down to
        ``save_top_k``; their files go at train start."""
        k, models = self.save_top_k, self.best_k_models
        if k < 1 or len(models) <= k:
            return
        worse, better = (max, min) if self.mode == "min" else (min, max)
        left = []
        while len(models) > k:
            left.append(worse(models, key=models.get))  # type: ignore[arg-type]
            models.pop(left[-1])
        self._left_top_k = tuple(left)
        self.kth_best_model_path = worse(models, key=models.get)  # type: ignore[arg-type]
        self.kth_value = models[self.kth_best_model_path]
        self.best_model_path = better(models, key=models.get)  # type: ignore[arg-type]
        self.best_model_score = models[self.best_model_path]

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
