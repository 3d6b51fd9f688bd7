"""The held step values of :mod:`lit_tricks.compat.step_log` on a Trainer's logger connector (part of
:mod:`lit_tricks.compat`): the state, the connector subclass whose metrics dicts log them when read, the wrapped
``on_batch_end`` and ``epoch_end_reached`` that log them when a stop, a validation or the epoch's end makes the batch
read after its hooks, and logging as from the hook that held them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from torch import Tensor

__all__ = ["log_held", "step_log_state", "validation_follows"]

_STATE = "_lit_tricks_step_log"  # the attribute of the logger connector holding a _StepLog


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
    (:func:`step_log_state` gives a Trainer's connector this class)."""

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


def step_log_state(trainer: pl.Trainer) -> _StepLog:
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
        """What runs first."""

    def __call__(self) -> None:
        self.before(self.connector.__dict__[_STATE])
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
    ``on_train_batch_start`` returned -1. Logged now, and put in the metrics dicts as that batch's end did with the
    rest (its step metrics, while ``_first_loop_iter`` is still set); then the module's epoch values."""

    name = "epoch_end_reached"

    def before(self, state: _StepLog) -> None:
        connector: Any = self.connector
        trainer = connector.trainer
        if not trainer.training or connector._first_loop_iter is None:
            return
        if _held_in_training(trainer, state):
            names = {name for _, name in state.held}
            log_held(trainer, state)
            metrics = connector.metrics
            for kind, attr in (("pbar", "_progress_bar_metrics"), ("callback", "_callback_metrics"),
                               ("log", "_logged_metrics")):
                getattr(connector, attr).update({k: v for k, v in metrics[kind].items() if k in names})
        module = trainer.lightning_module
        if callable(log_epoch_end := getattr(module, "_lit_tricks_log_epoch_end", None)):
            with _in_hook(module, connector, "on_train_epoch_end", last=True):
                log_epoch_end()


def _flush_on_read(connector: _LoggerConnector, flag: tuple[str, bool] | None) -> None:
    """Log the held values the metrics dict being read holds (with ``flag``: the ``self.log`` argument that puts a
    value there, and its default), but not a ``sync_dist`` one under several processes (its ``self.log`` is a
    collective; one rank may read alone)."""
    state: _StepLog | None = connector.__dict__.get(_STATE)
    trainer = connector.trainer
    if state is None or not _held_in_training(trainer, state):
        return
    several = trainer.world_size > 1

    def which(kwargs: dict[str, Any]) -> bool:
        shown = flag is None or bool(flag[1] if kwargs.get(flag[0]) is None else kwargs[flag[0]])  # None: default
        return shown and not (several and kwargs.get("sync_dist", False))

    log_held(trainer, state, which)


def _log_held(trainer: pl.Trainer, state: _StepLog) -> None:
    """Log the held values if the batch ending now is read after its hooks (a stop, a validation follows)."""
    if not _held_in_training(trainer, state):
        return
    if state.validates is None:
        state.validates = bool(trainer.enable_validation)
    if not (trainer.should_stop or (state.validates and validation_follows(trainer))):
        return
    log_held(trainer, state)


def _held_in_training(trainer: pl.Trainer, state: _StepLog) -> bool:
    """Whether values are held and the fit is training now; values held in an earlier fit (Lightning replaced its
    metrics dicts since) are dropped."""
    if state.held and state.metrics is not trainer._logger_connector._callback_metrics:
        state.held.clear()
    return bool(state.held) and bool(trainer.training)


def log_held(trainer: pl.Trainer, state: _StepLog, which: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Log the held values (those whose ``self.log`` keyword arguments ``which`` accepts) and forget them."""
    if which is None:
        held = list(state.held.items())
        state.held.clear()
    else:
        held = [(key, entry) for key, entry in state.held.items() if which(entry[2])]
        for key, _ in held:
            del state.held[key]
    for (fx, name), (module, value, kwargs) in held:
        with _in_hook(module, trainer._logger_connector, fx):
            module.log(name, value() if callable(value) else value, **kwargs)


@contextlib.contextmanager
def _in_hook(module: pl.LightningModule, connector: Any, fx: str | None, last: bool = False) -> Iterator[None]:
    """``module.log`` as from hook ``fx`` (the same key in Lightning's results), as the hook logging last: in an
    epoch's first batch Lightning would else reset that hook's values of this batch (``should_reset_tensors``).
    ``last``: it stays the hook logging last (the next hook's first log at an epoch end would reset ``fx``'s)."""
    current, logged_last = module._current_fx_name, connector._current_fx
    module._current_fx_name = connector._current_fx = fx
    try:
        yield
    finally:
        module._current_fx_name = current
        if not last:
            connector._current_fx = logged_last
