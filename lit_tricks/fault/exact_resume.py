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

4. the epoch start Lightning skips: after a checkpoint taken at an epoch's last batch, Lightning starts the next
   epoch without ``on_train_epoch_start`` (:func:`run_skipped_epoch_start` runs it once, for every callback and the
   module; a callback whose epoch-start work must not be lost calls it from its ``on_train_start``).

The CSV logger's row count at each checkpoint goes into the checkpoint too (:func:`csv_log_rows`), so a resumed
run keeps exactly the rows written before the checkpoint (:func:`lit_tricks.fault.resume.continue_csv_logs` reads it).
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_tricks.compat import (
    call_epoch_start,
    epoch_results_state,
    epoch_start_skipped,
    logged_metrics_state,
    restore_epoch_results,
    restore_logged_metrics,
    rows_logged_after_save,
)

__all__ = ["CSV_ROWS_KEY", "capture_loop_values", "csv_log_rows", "restore_loop_values", "run_skipped_epoch_start"]

#: Top-level checkpoint key: ``{"<logger name>/<version dir>": rows of its metrics.csv when the checkpoint was taken}``.
CSV_ROWS_KEY = "lit_tricks_csv_rows"


def capture_loop_values(trainer: pl.Trainer) -> dict[str, Any]:
    """This rank's logged values that no checkpoint holds (see the module docstring, item 3); empty outside fit."""
    if trainer.state.fn != "fit" or trainer.sanity_checking:
        return {}
    return {"epoch_results": epoch_results_state(trainer), "metrics": logged_metrics_state(trainer)}


def restore_loop_values(trainer: pl.Trainer, values: dict[str, Any], same_epoch: bool) -> None:
    """Put :func:`capture_loop_values`' output back into ``trainer`` (before the first resumed batch); the epoch's
    aggregates only when the fit goes on with the epoch they belong to (``same_epoch``)."""
    restore_logged_metrics(trainer, values.get("metrics", {}))
    if same_epoch:
        restore_epoch_results(trainer, values.get("epoch_results", []))


_EPOCH_STARTED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def run_skipped_epoch_start(trainer: pl.Trainer) -> bool:
    """Run the ``on_train_epoch_start`` that Lightning skips after a last-batch checkpoint (every callback's, then the
    module's, with the epoch counters), once per fit; True when it ran now. Call it from ``on_train_start``.

    Only that case: after any other mid-epoch checkpoint the epoch's start hooks ran before the save and their effects
    are in the restored states, so they must not run twice.
    """
    if not epoch_start_skipped(trainer):
        return False
    loop = trainer.fit_loop
    processed = int(getattr(loop.epoch_progress.total, "processed", 0))  # a tracker typed as its base class
    if _EPOCH_STARTED.get(loop) == processed:
        return False
    _EPOCH_STARTED[loop] = processed
    call_epoch_start(trainer)
    return True


def csv_log_rows(trainer: pl.Trainer) -> dict[str, int]:
    """Rows each CSV logger of ``trainer`` has written (flushed first), keyed ``<name>/<version dir>``; rank 0 only.

    At a training batch's (an epoch's) end the batch's step row (the epoch's row), which Lightning logs right after
    that hook, counts too: a resumed fit does not run that batch (epoch end) again. (A kill in the instant between
    the checkpoint and that row loses the row.)"""
    from lightning.pytorch.loggers import CSVLogger

    rows: dict[str, int] = {}
    if not trainer.is_global_zero:
        return rows
    pending = rows_logged_after_save(trainer)  # a batch's or an epoch's row, logged right after this checkpoint
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
