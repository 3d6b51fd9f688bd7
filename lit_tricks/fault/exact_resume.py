"""What an exact resume needs beyond the model, optimizer and callback states Lightning checkpoints.

:class:`lit_tricks.callbacks.RNGState` carries these pieces in its checkpoint state and restores them in this order
at ``on_train_start`` (after Lightning restored its loops, before the first batch is fetched):

1. the train loader's data position, when a loader built before the restore never received it
   (:func:`lit_tricks.compat.apply_pending_train_loader_state`: creating its iterator again draws from the RNG, so
   this goes before the RNG states);
2. every rank's RNG states (:mod:`lit_tricks.fault.rng`);
3. the training epoch's logged aggregates so far (``train/loss_epoch`` averages every batch of the epoch, not only
   those after the restart) and the values callbacks read (``trainer.callback_metrics``: an epoch end resumed after
   its validation still sees ``val/loss``).

The CSV logger's row count at each checkpoint goes into the checkpoint too (:func:`csv_log_rows`), so a resumed
run keeps exactly the rows written before the checkpoint (``lit_tricks.run`` reads it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_tricks.compat import (
    epoch_results_state,
    logged_metrics_state,
    restore_epoch_results,
    restore_logged_metrics,
    train_step_row_pending,
)

__all__ = ["CSV_ROWS_KEY", "capture_loop_values", "csv_log_rows", "restore_loop_values"]

#: Top-level checkpoint key: ``{"<logger name>/<version dir>": rows of its metrics.csv when the checkpoint was taken}``.
CSV_ROWS_KEY = "lit_tricks_csv_rows"


def capture_loop_values(trainer: pl.Trainer) -> dict[str, Any]:
    """This rank's logged values that no checkpoint holds (see the module docstring, item 3); empty outside fit."""
    if trainer.state.fn != "fit" or trainer.sanity_checking:
        return {}
    return {"epoch_results": epoch_results_state(trainer), "metrics": logged_metrics_state(trainer)}


def restore_loop_values(trainer: pl.Trainer, values: dict[str, Any]) -> None:
    """Put :func:`capture_loop_values`' output back into ``trainer`` (before the first resumed batch)."""
    restore_logged_metrics(trainer, values.get("metrics", {}))
    restore_epoch_results(trainer, values.get("epoch_results", []))


def csv_log_rows(trainer: pl.Trainer) -> dict[str, int]:
    """Rows each CSV logger of ``trainer`` has written (flushed first), keyed ``<name>/<version dir>``; rank 0 only.

    At a training batch's end the batch's own step row, which Lightning logs right after that hook, counts too: a
    resumed fit does not run that batch again. (A kill in the instant between the checkpoint and that row loses
    the row.)"""
    from lightning.pytorch.loggers import CSVLogger

    rows: dict[str, int] = {}
    if not trainer.is_global_zero:
        return rows
    pending = int(train_step_row_pending(trainer))  # this batch's row, logged right after a batch-end checkpoint
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        logger.save()
        path = Path(logger.log_dir) / "metrics.csv"
        count = 0
        with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
            count = max(sum(1 for _ in fh) - 1, 0)  # lines minus the header (Lightning writes numbers only)
        rows[f"{logger.name}/{Path(logger.log_dir).name}"] = count + pending
    return rows
