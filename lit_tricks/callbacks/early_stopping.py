"""EarlyStopping: Lightning's, plus ``start_from_epoch`` and ``restore_best_weights``, with exact resume."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from torch import Tensor

from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.sharded import full_state_dict, has_dtensors, load_full_state_dict_
from lit_tricks.validation import check_number
from lit_tricks.weight_variants import weight_variants_of

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1


class EarlyStopping(_LightningEarlyStopping):
    """Stop training when ``monitor`` stops improving; optionally restore the weights of the best check.

    Same arguments, defaults and behaviour as ``lightning.pytorch.callbacks.EarlyStopping`` (stop when
    ``patience`` checks in a row did not improve by more than ``min_delta``, or at a threshold / non-finite
    value), plus:

    Args:
        start_from_epoch: no check before this epoch: no stop, no patience counting, no best score (Keras).
        restore_best_weights: keep a CPU copy of the weights that produced the best score and put them back into
            the model when fit ends (after a stop, or at ``max_epochs``). These are the weights that were
            *evaluated*: the EMA weights when an EMA callback swapped them in for validation; when ``monitor`` was
            computed with a weight variant (``EMAWeights(validate_both=True)`` and ``val/acc_ema``: the module's
            ``weight_variants.variant_of(monitor)`` is ``"ema"``, see :mod:`lit_tricks.weight_variants`), that
            variant's weights.

    A check that stops training at ``stopping_threshold`` counts as the best when it is one: ``best_epoch``,
    ``best_value`` (the monitor's value at ``best_epoch``) and the restored weights are that check's
    (``best_score`` stays Lightning's, which skips that comparison). The reason for stopping is
    logged (INFO) and kept in ``stopping_reason_message``. The counters, best score,
    best epoch and best weights are in ``state_dict``, so stop-and-resume equals an uninterrupted run. Under DDP
    the decision to stop (Lightning's) and the decision to keep new best weights (rank 0's) are the same on
    every rank.
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        *,
        start_from_epoch: int = 0,
        restore_best_weights: bool = False,
    ) -> None:
        check_number("start_from_epoch", start_from_epoch, 0, integer=True, owner="EarlyStopping")
        check_number("patience", patience, 0, integer=True, owner="EarlyStopping")
        super().__init__(
            monitor=monitor, min_delta=min_delta, patience=patience, verbose=verbose, mode=mode, strict=strict,
            check_finite=check_finite, stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold, check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.best_epoch = -1  # epoch of the best score (-1: none yet)
        self.best_value = math.nan  # the monitor's value at best_epoch (also when it stopped at the threshold)
        self.best_weights: dict[str, Tensor] | None = None  # on CPU
        self._candidate: dict[str, Tensor] | None = None  # weights of the last validation, on CPU
        self._candidate_step = -1  # trainer.global_step when _candidate was taken

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(version=_STATE_VERSION, best_epoch=self.best_epoch, best_value=self.best_value,
                     best_weights=self.best_weights)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        self.best_value = float(state_dict.get("best_value", self.best_score))
        self.best_weights = state_dict.get("best_weights")
        self._candidate, self._candidate_step = None, -1

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Snapshot what is being evaluated now (EMA weights, if swapped in): the metric is only known later,
        # after the module's own epoch-end hook, by which time another callback may have swapped weights back.
        if not self.restore_best_weights or self._should_skip_check(trainer):
            return
        if trainer.current_epoch < self.start_from_epoch:
            return
        self._candidate = self._snapshot(pl_module, into=self._candidate)
        self._candidate_step = trainer.global_step

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            load_full_state_dict_(pl_module, self.best_weights)  # sharded: each rank its chunks of the full copy
            self._log_info(
                trainer,
                f"EarlyStopping: restored the weights of epoch {self.best_epoch} ({self.monitor} = "
                f"{self.best_value:.6g}).",
                self.log_rank_zero_only,
            )

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.current_epoch < self.start_from_epoch:
            return
        best_before = self.best_score
        was_stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        improved = self.best_score is not best_before or self._improved_at_threshold(trainer, was_stopping)
        checked = self.monitor in trainer.callback_metrics and not getattr(trainer, "fast_dev_run", False)
        if self.restore_best_weights and checked:
            improved = bool(trainer.strategy.broadcast(improved, src=0))
            if improved:
                self._keep_best(trainer)
        if improved:
            self.best_epoch = trainer.current_epoch
            self.best_value = float(trainer.callback_metrics[self.monitor])
        if trainer.should_stop and not was_stopping and self.stopping_reason_message and not self.verbose:
            self._log_info(
                trainer, f"EarlyStopping stopped training at epoch {trainer.current_epoch}: "
                f"{self.stopping_reason_message}", self.log_rank_zero_only,
            )

    # ------------------------------------------------------------------ internals
    def _improved_at_threshold(self, trainer: pl.Trainer, was_stopping: bool) -> bool:
        """Whether the check that stopped training at ``stopping_threshold`` improved on the best: Lightning stops
        there before comparing with the best score (val/loss 1.0, 0.8, 0.5 with threshold 0.6: ``best_score`` stays
        0.8, as in Lightning), but ``best_epoch``, ``best_value`` and the restored weights are that check's."""
        current = trainer.callback_metrics.get(self.monitor)
        if (self.stopping_threshold is None or was_stopping or not trainer.should_stop or current is None
                or not torch.isfinite(current) or not self.monitor_op(current, self.stopping_threshold)):
            return False
        current = current.squeeze()
        return bool(self.monitor_op(current - self.min_delta, self.best_score.to(current.device)))

    def _keep_best(self, trainer: pl.Trainer) -> None:
        pl_module = trainer.lightning_module
        if self._candidate is None or self._candidate_step != trainer.global_step:
            # the metric did not come from a validation run just now (e.g. a train metric): take current weights
            self._candidate = self._snapshot(pl_module, into=self._candidate, use_variant=False)
        # swap the two CPU buffers: the old best becomes the next candidate's storage (no new allocation)
        self.best_weights, self._candidate = self._candidate, self.best_weights
        self._candidate_step = -1

    def _snapshot(
        self, pl_module: pl.LightningModule, into: dict[str, Tensor] | None, use_variant: bool = True
    ) -> dict[str, Tensor]:
        """CPU copy of ``pl_module.state_dict()`` (inside the weight variant that computed ``monitor``, if any)."""
        variants = weight_variants_of(pl_module) if use_variant else None
        name = variants.variant_of(self.monitor) if variants is not None else None
        ctx_factory = variants.context(name) if variants is not None and name is not None else None
        if ctx_factory is not None:
            with ctx_factory():
                return self._copy_state(pl_module, into)
        return self._copy_state(pl_module, into)

    @staticmethod
    @torch.no_grad()
    def _copy_state(pl_module: pl.LightningModule, into: dict[str, Tensor] | None) -> dict[str, Tensor]:
        sd = full_state_dict(pl_module) if has_dtensors(pl_module) else pl_module.state_dict()  # shards gathered
        if into is not None and into.keys() == sd.keys() and all(
            into[k].shape == v.shape and into[k].dtype == v.dtype for k, v in sd.items()
        ):
            for k, v in sd.items():
                into[k].copy_(v)
            return into
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def _should_skip_check(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    @staticmethod
    def _log_info(trainer: pl.Trainer, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        message = rank_prefixed_message(message, rank)
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(message)
