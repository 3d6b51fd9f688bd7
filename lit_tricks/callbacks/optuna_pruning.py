"""Report the monitored metric to an Optuna trial after every validation; stop a trial its pruner gives up on."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from lit_tricks.fault.state_keys import cached_state_key

__all__ = ["OptunaPruning"]


class OptunaPruning(pl.Callback):
    """Report ``monitor`` to an Optuna trial after each validation epoch and raise ``optuna.TrialPruned`` when the
    study's pruner says so (the sweeper records the trial as PRUNED; ``lit_tricks.run`` writes status ``pruned``).

    The reported step is the number of epochs completed (``current_epoch + 1``): the pruners' resource, so
    ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)`` decides after 1, 3 and 9 epochs.

    Args:
        monitor: the logged metric the study optimizes (``${monitor}``).
        trial: the ``optuna.Trial``; None = the running Hydra job's trial under ``hydra/sweeper=lit_optuna``, and
            outside such a sweep the callback does nothing.

    Under DDP rank 0 reports and decides, and every rank stops together (the decision is broadcast). Lightning 2.x
    counterpart of optuna-integration's ``PyTorchLightningPruningCallback``, which needs the trial at construction
    (a YAML-built callback cannot have it) and an RDB storage under DDP.
    """

    def __init__(self, monitor: str = "val/loss", trial: Any = None) -> None:
        super().__init__()
        self.monitor = monitor
        self.trial = trial
        self._looked_up = trial is not None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, monitor=self.monitor)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._looked_up and trainer.is_global_zero:
            self._looked_up = True
            try:
                from lit_tricks.optuna_job import current_trial
            except ImportError:  # optuna not installed: no sweep can be running
                return
            self.trial = current_trial()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, value = False, math.nan
        if self.trial is not None and trainer.is_global_zero:
            metric = trainer.callback_metrics.get(self.monitor)
            if metric is None:
                raise KeyError(f"OptunaPruning: monitor={self.monitor!r} was not logged; logged metrics: "
                               f"{sorted(trainer.callback_metrics)}")
            value = float(metric)
            self.trial.report(value, step=trainer.current_epoch + 1)  # epochs completed: the pruners' resource
            prune = bool(self.trial.should_prune())
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch} ({self.monitor}={value:.4g})")
