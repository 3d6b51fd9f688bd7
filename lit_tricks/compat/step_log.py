"""Step values logged only on the steps someone reads them (part of :mod:`lit_tricks.compat`).

``self.log(name, value, on_step=True)`` at every training batch costs a ``self.log`` per step, and without a reader
the value is overwritten at the next one. :func:`step_value_read` says, inside the batch, whether its value is read:
Lightning writes step metrics now, the progress bar shows it, a fast_dev_run, the epoch's or the fit's last batch, a
callback or a step-interval ReduceLROnPlateau monitors it, a ModelCheckpoint that saves at this step (every k steps,
or on a timer: any step) formats it in its file name. :func:`log_step_value` logs the value then, and otherwise
holds it back (a reference, nothing computed) until the end of its batch, after every hook of the batch (the
callbacks' and then the LightningModule's ``on_train_batch_end``), right before Lightning collects the batch's step
metrics (``_logger_connector.on_batch_end``, which this module wraps): it logs it there when the batch turned out to
be read after all, because the fit stops there (``trainer.should_stop``, set in any hook of the batch) or a
validation follows it (a checkpoint, an early stopping at its end reads the training values). So a fit ends, and
every reader sees, what Lightning's every-step ``self.log`` leaves. A value stays held until a newer one of its name
replaces it or is logged: an optimizer step's norm is logged when a later batch of the next accumulation window
stops the fit.

A reader of ``trainer.callback_metrics``, ``logged_metrics`` or ``progress_bar_metrics`` inside the fit's training
(any callback, monitor or not) gets the held values logged first, so it sees the step's values too. A batch followed
by one whose ``on_train_batch_start`` returns -1 (the epoch ends; no later hook may log a step value) has its held
values logged when the epoch's end is reached (``epoch_end_reached``, wrapped too).

Under DDP a held ``sync_dist`` value is logged (a collective) where ``should_stop`` is set: set it on every rank, as
Lightning's loop itself needs; a metrics read does not log it (one rank may read alone), so such a reader without a
``monitor`` sees the last read step's value. With time-based validation every held value is logged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from torch import Tensor

__all__ = ["log_step_value", "logs_this_step", "step_value_read", "validation_follows"]

_STATE = "_lit_tricks_step_log"  # the attribute of the logger connector holding a _StepLog
_FIELD = re.compile(r"(\{.*?)[:\}]")  # a field of a checkpoint file name (ModelCheckpoint._format_checkpoint_name's)


class _Readers(NamedTuple):
    """Who among the callbacks reads a set of step metric names."""

    always: bool  # a callback or a step plateau schedule monitors one, or a timed checkpoint formats one in its name
    every: tuple[int, ...]  # every_n_train_steps of the step checkpoints formatting one in their file names


class _StepLog:
    """What this module keeps of one Trainer, on its logger connector: the held values, their metrics dicts, and the
    readers of each set of names found in the callbacks list and the LR schedules (recomputed when either changes)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str | None, str], tuple[pl.LightningModule, Tensor | Callable[[], Tensor],
                                                      dict[str, Any]]] = {}
        self.metrics: Any = None  # the connector's callback_metrics dict held values belong to (a fit replaces it)
        self.callbacks: Any = None
        self.schedules: Any = None  # trainer.lr_scheduler_configs (a fit sets a new list)
        self.count = -1
        self.readers: dict[tuple[str, ...], _Readers] = {}
        self.validates: bool | None = None  # trainer.enable_validation in this fit (constant within it; is_overridden)


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
    state = _state(trainer)
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


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning runs a validation right after this training batch (the epoch loop's ``_should_check_val_fx``,
    as Lightning decides after the batch's hooks); with time-based validation whenever validation runs in this epoch
    (the time may be up by the time Lightning asks)."""
    loop = trainer.fit_loop.epoch_loop
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return bool(loop._should_check_val_epoch())
    return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))  # type: ignore[arg-type]


class _ReadFlushingConnector(_LoggerConnector):
    """Lightning's logger connector whose metrics dicts, read inside the fit's training, log the held values first
    (:func:`_state` gives a Trainer's connector this class)."""

    @property
    def callback_metrics(self) -> Any:
        _flush_on_read(self, None)
        return super().callback_metrics

    @property
    def logged_metrics(self) -> Any:
        _flush_on_read(self, ("logger", True))
        return super().logged_metrics

    @property
    def progress_bar_metrics(self) -> Any:  # (a progress bar reads it every batch: its values are never held)
        _flush_on_read(self, ("prog_bar", False))
        return super().progress_bar_metrics


def _state(trainer: pl.Trainer) -> _StepLog:
    """This Trainer's :class:`_StepLog`; made at first use, when the connector's ``on_batch_end`` and
    ``epoch_end_reached`` are wrapped and its metrics dicts log the held values when read (Lightning's own connector
    class only: a subclass keeps its own)."""
    connector = trainer._logger_connector
    state: _StepLog | None = connector.__dict__.get(_STATE)
    if state is None:
        setattr(connector, _STATE, state := _StepLog())
        for wrapped in (_BatchEnd, _EpochEndReached):  # instance methods, replaced
            setattr(connector, wrapped.name, wrapped(connector))
        if type(connector) is _LoggerConnector:
            connector.__class__ = _ReadFlushingConnector
    return state


class _Wrapped:
    """A connector method, replaced on the instance by an object (not a closure: a Trainer pickles and deep-copies,
    and the copy's connector calls its own) that runs :meth:`before` and then the method (or another's wrapper)."""

    name = ""

    def __init__(self, connector: _LoggerConnector) -> None:
        self.connector, self.inner = connector, connector.__dict__.get(self.name)  # another's wrapper, if any

    def before(self, state: _StepLog) -> None:  # pragma: no cover - each subclass's
        """What runs first, when values are held."""

    def __call__(self) -> None:
        state: _StepLog = self.connector.__dict__[_STATE]
        if state.held:
            self.before(state)
        if self.inner is not None:
            self.inner()
        else:
            getattr(type(self.connector), self.name)(self.connector)


class _BatchEnd(_Wrapped):
    """``on_batch_end``: first logs the held values if the batch is read after its hooks (a stop, a validation)."""

    name = "on_batch_end"

    def before(self, state: _StepLog) -> None:
        _log_held(self.connector.trainer, state)


class _EpochEndReached(_Wrapped):
    """``epoch_end_reached`` in training: values still held are the last batch's, unread as the next batch's
    ``on_train_batch_start`` returned -1 (no later hook may log a step value). Logged now, and put in the metrics
    dicts as that batch's end did with the rest (its step metrics, while ``_first_loop_iter`` is still set)."""

    name = "epoch_end_reached"

    def before(self, state: _StepLog) -> None:
        connector: Any = self.connector
        if not connector.trainer.training or connector._first_loop_iter is None:
            return
        if state.metrics is not connector._callback_metrics:  # held in an earlier fit
            state.held.clear()
            return
        names = {name for _, name in state.held}
        _log(connector.trainer, state)
        metrics = connector.metrics
        for kind, attr in (("pbar", "_progress_bar_metrics"), ("callback", "_callback_metrics"),
                           ("log", "_logged_metrics")):
            getattr(connector, attr).update({k: v for k, v in metrics[kind].items() if k in names})


def _flush_on_read(connector: _LoggerConnector, flag: tuple[str, bool] | None) -> None:
    """Log the held values the metrics dict being read holds (with ``flag``: the ``self.log`` argument that puts a
    value there, and its default), but not a ``sync_dist`` one under several processes (its ``self.log`` is a
    collective; one rank may read alone)."""
    state: _StepLog | None = connector.__dict__.get(_STATE)
    if state is None or not state.held:
        return
    trainer = connector.trainer
    if not trainer.training or state.metrics is not connector._callback_metrics:
        return
    several = trainer.world_size > 1

    def which(kwargs: dict[str, Any]) -> bool:
        shown = flag is None or bool(flag[1] if kwargs.get(flag[0]) is None else kwargs[flag[0]])  # None: default
        return shown and not (several and kwargs.get("sync_dist", False))

    _log(trainer, state, which)


def _log_held(trainer: pl.Trainer, state: _StepLog) -> None:
    """Log the held values if the batch ending now is read after its hooks (a stop, a validation follows)."""
    if not trainer.training:
        return
    if state.metrics is not trainer._logger_connector._callback_metrics:  # held in an earlier fit
        state.held.clear()
        return
    if state.validates is None:
        state.validates = bool(trainer.enable_validation)
    if not (trainer.should_stop or (state.validates and validation_follows(trainer))):
        return
    _log(trainer, state)


def _log(trainer: pl.Trainer, state: _StepLog, which: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Log the held values (those whose ``self.log`` keyword arguments ``which`` accepts) and forget them."""
    if which is None:
        held = list(state.held.items())
        state.held.clear()
    else:
        held = [(key, entry) for key, entry in state.held.items() if which(entry[2])]
        for key, _ in held:
            del state.held[key]
    connector: Any = trainer._logger_connector
    for (fx, name), (module, value, kwargs) in held:
        current, logged_last = module._current_fx_name, connector._current_fx
        # the hook that held it (the same key in Lightning's results as when read), as the hook logging last: in an
        # epoch's first batch Lightning would else reset that hook's values of this batch (should_reset_tensors)
        module._current_fx_name = connector._current_fx = fx
        try:
            module.log(name, value() if callable(value) else value, **kwargs)
        finally:
            module._current_fx_name, connector._current_fx = current, logged_last


def _readers(trainer: pl.Trainer, names: tuple[str, ...]) -> _Readers:
    state = _state(trainer)
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
