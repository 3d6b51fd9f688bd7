"""Step values logged only on the steps someone reads them (part of :mod:`lit_tricks.compat`).

``self.log(name, value, on_step=True)`` at every training batch costs a ``self.log`` per step, and without a reader
the value is overwritten at the next one. :func:`step_value_read` says, inside the batch, whether its value is read:
Lightning writes step metrics now, the progress bar shows it, a fast_dev_run, the epoch's or the fit's last batch, a
callback or a step-interval ReduceLROnPlateau monitors it, a ModelCheckpoint that saves at this step (every k steps,
or on a timer) formats it in its file name. :func:`log_step_value` logs the value then, else holds it back (a
reference, nothing computed) and logs it when it turns out to be read: by a metrics dict read in the fit's training
(``trainer.callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``: the Trainer's logger connector gets a
subclass), at its batch's end right before Lightning collects the step metrics (``_logger_connector.on_batch_end``,
wrapped) if the fit stops there (``trainer.should_stop``) or a validation follows, or when the epoch's end is reached
(``epoch_end_reached``, wrapped: the next batch's ``on_train_batch_start`` returned -1). So a fit ends, and every
reader sees, what Lightning's every-step ``self.log`` leaves. A value stays held until a newer one of its name
replaces it or is logged. At the epoch's end a LightningModule's ``_lit_tricks_log_epoch_end()`` (TrickModule's epoch
means) is called as from its ``on_train_epoch_end``, before any callback's ``on_train_epoch_end``, which Lightning
calls first: a callback reading there sees them, as Lightning's ``on_epoch=True`` values.

Under DDP a held ``sync_dist`` value is logged (a collective) where ``should_stop`` is set: set it on every rank, as
Lightning's loop itself needs; a metrics read does not log it (one rank may read alone), so such a reader without a
``monitor`` sees the last read step's value. With time-based validation every held value is logged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from lit_tricks.compat.step_log_connector import _Readers, step_log_state, validation_follows

__all__ = ["log_step_value", "logs_this_step", "step_value_read", "validation_follows"]

_FIELD = re.compile(r"(\{.*?)[:\}]")  # a field of a checkpoint file name (ModelCheckpoint._format_checkpoint_name's)


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step metrics at this batch (``trainer._logger_connector.should_update_logs``).

    On other batches a ``self.log(on_step=True)`` value is discarded at batch end, so a callback can skip computing
    it. True when the connector is missing (log, to be safe). Also true without a logger (Lightning then writes to
    no one, but the values stay in ``callback_metrics``: a fit stopped mid-epoch keeps them).
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def step_value_read(trainer: pl.Trainer, names: tuple[str, ...], prog_bar: bool = False) -> bool:
    """Whether a value logged with ``on_step=True`` at this batch (as ``names``) is read inside the batch: Lightning
    writes step metrics now (:func:`logs_this_step`), the progress bar shows it (``prog_bar``), a fast_dev_run, the
    epoch's or the fit's last batch (the values a run ends with), a callback monitors one of ``names`` (or a
    ReduceLROnPlateau stepped every batch: Lightning reads its monitor after the batch end), or a ModelCheckpoint
    formats one in its file name and saves at this step (``every_n_train_steps``) or may (``train_time_interval``).
    What is found in the callbacks and schedules is computed once per callbacks list and length, and schedules list.
    Reads after the batch's hooks (a stop, a validation) are :func:`log_step_value`'s."""
    if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or 0 <= trainer.max_steps <= trainer.global_step + 1:
        return True
    if (prog_bar and trainer.progress_bar_callback is not None) or trainer.fast_dev_run:  # type: ignore[attr-defined]
        return True
    if logs_this_step(trainer):
        return True
    readers = _readers(trainer, names)
    if readers.always or not readers.every:
        return readers.always
    step = trainer.global_step  # a step's checkpoint saves at its batch end, when the global step has counted it:
    ends = (step + 1,) if trainer.lightning_module.automatic_optimization else (step, step + 1)  # manual: before/after
    return any(end % every == 0 for every in readers.every for end in ends)


def log_step_value(module: pl.LightningModule, read: bool, name: str, value: Tensor | Callable[[], Tensor],
                   **kwargs: Any) -> None:
    """``module.log(name, value, **kwargs)`` (a step value, ``on_step=True``) now when ``read``; else held back and
    logged at the end of the batch if a stop or a validation follows (the module docstring), from the hook it came
    from (the same ``self.log`` key). ``value``: a tensor, or a function making it (called only when logged)."""
    trainer: Any = module._trainer
    state = step_log_state(trainer)
    metrics = trainer._logger_connector._callback_metrics
    if state.metrics is not metrics:  # Lightning reset its metrics (a new fit): what is held belongs to none
        state.held.clear()
        state.metrics, state.validates = metrics, None
    key = (module._current_fx_name, name)
    if read:
        if state.held:
            state.held.pop(key, None)
        module.log(name, value() if callable(value) else value, **kwargs)
    else:
        state.held[key] = (module, value, kwargs)


def _readers(trainer: pl.Trainer, names: tuple[str, ...]) -> _Readers:
    state = step_log_state(trainer)
    callbacks, schedules = trainer.callbacks, trainer.lr_scheduler_configs  # type: ignore[attr-defined]
    if state.callbacks is not callbacks or state.count != len(callbacks) or state.schedules is not schedules:
        state.callbacks, state.count, state.schedules, state.readers = callbacks, len(callbacks), schedules, {}
    readers = state.readers.get(names)
    if readers is None:
        readers = state.readers[names] = _find_readers(callbacks, schedules, names)
    return readers


def _find_readers(callbacks: list[pl.Callback], schedules: list[Any], names: tuple[str, ...]) -> _Readers:
    # Lightning steps a plateau schedule of interval "step" after each batch end on callback_metrics[monitor]: under
    # DDP a read does not log a held sync_dist value, and its absence fails the fit
    always = any(c.reduce_on_plateau and c.interval == "step" and c.monitor in names for c in schedules)
    every = set()
    for callback in callbacks:
        always = always or getattr(callback, "monitor", None) in names
        if isinstance(callback, ModelCheckpoint) and _formats(callback, names):
            if callback._train_time_interval is not None:
                always = True
            elif callback._every_n_train_steps >= 1:
                every.add(callback._every_n_train_steps)
    return _Readers(always, tuple(sorted(every)))


def _formats(checkpoint: ModelCheckpoint, names: tuple[str, ...]) -> bool:
    """Whether the checkpoint's file name (or its ``last`` name) has a field of one of ``names``."""
    texts = (checkpoint.filename or "", checkpoint.CHECKPOINT_NAME_LAST or "")
    return any(field[1:] in names for text in texts for field in _FIELD.findall(text))
