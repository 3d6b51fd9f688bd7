"""Every private Lightning API lit_tricks relies on, in one place, each behind a small function.

Lightning keeps no promise about names with a leading underscore; lit_tricks supports only the Lightning it is
tested against (:data:`TESTED_LIGHTNING`, the floor in ``pyproject.toml``), and ``tests/test_compat.py`` exercises
every function here against the installed Lightning, so an upgrade that moves one of these internals fails there,
by name, instead of somewhere inside a fit. The package imports only Lightning and torch; the fit loop's restart
and logging state that exact resume needs lives in :mod:`lit_tricks.compat.loops`, the step values logged only when
read in :mod:`lit_tricks.compat.step_log` (both re-exported here; the held values on the Trainer's logger connector
in :mod:`lit_tricks.compat.step_log_connector`).

Not gathered here, on purpose:

- ``Callback._generate_state_key``: protected by name, but Lightning's documented way to define a callback's
  ``state_key`` (its docs on callback state use it), so the callbacks call it directly. Its *output format*, which
  :mod:`lit_tricks.fault.state_keys` reads back, is not documented: :func:`state_key_args` parses it here.
- Private methods that lit_tricks *overrides* (Lightning calls them, so they keep their names): they are listed in
  :data:`PRIVATE_OVERRIDES`, and the test checks that Lightning still defines each of them.
"""

from __future__ import annotations

import ast
import signal
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lit_tricks.compat.loops import (
    apply_pending_train_loader_state,
    batch_end_is_resumable,
    call_epoch_start,
    epoch_results_state,
    epoch_start_skipped,
    logged_metrics_state,
    restart_train_iterator,
    restore_epoch_results,
    restore_logged_metrics,
    rows_logged_after_save,
)
from lit_tricks.compat.step_log import log_step_value, logs_this_step, step_value_read, validation_follows

__all__ = [
    "PRIVATE_OVERRIDES",
    "TESTED_LIGHTNING",
    "CheckpointPath",
    "SubprocessScriptLauncher",
    "apply_pending_train_loader_state",
    "basic_subprocess_cmd",
    "batch_end_is_resumable",
    "call_epoch_start",
    "checkpoint_ranks_at_train_epoch_end",
    "cluster_environment",
    "csv_logger_version",
    "epoch_results_state",
    "epoch_start_skipped",
    "first_train_loader",
    "inside_accumulation_window",
    "installed_checkpoint_io",
    "keep_signal_handlers_after_fit",
    "legacy_state_key",
    "log_step_value",
    "logged_metrics_state",
    "logs_this_step",
    "module_trainer",
    "pin_csv_logger_version",
    "restart_train_iterator",
    "restore_epoch_results",
    "restore_logged_metrics",
    "rows_logged_after_save",
    "saves_distributed_checkpoint",
    "set_num_threads_if_needed",
    "set_strategy_launcher",
    "sharded_strategy_name",
    "state_key_args",
    "step_value_read",
    "unwrap_optimizer",
    "validation_follows",
]

#: The Lightning release (major.minor) the test suite runs against; ``pyproject.toml`` requires at least this one.
TESTED_LIGHTNING = "2.6"

#: The path type of Lightning's ``CheckpointIO`` methods (``lightning.fabric.utilities.types._PATH``): a subclass
#: of ``CheckpointIO`` annotates its paths with it to keep Lightning's signatures.
CheckpointPath = _PATH

#: Lightning's script launcher (``lightning.pytorch.strategies.launchers.subprocess_script._SubprocessScriptLauncher``),
#: the base of the Hydra-safe launcher in :mod:`lit_tricks.trainers.strategies`.
SubprocessScriptLauncher = _SubprocessScriptLauncher

#: Private Lightning methods that lit_tricks overrides or calls on ``super()``: {Lightning class: names}.
#: ``EarlyStopping``: :class:`lit_tricks.callbacks.EarlyStopping` wraps the check (``_run_early_stopping_check``),
#: reuses the skip rule and the rank-aware logger. ``ModelCheckpoint``: :class:`lit_tricks.callbacks.ModelCheckpoint`
#: writes a deferred step save through Lightning's own skip rule and top-k/last savers. The DDP/FSDP strategies and
#: the script launcher: :mod:`lit_tricks.trainers.strategies` swaps in its launcher after ``_configure_launcher``
#: and replaces the launcher's ``_call_children_scripts`` (which calls ``_check_can_spawn_children``).
PRIVATE_OVERRIDES: dict[type, tuple[str, ...]] = {
    EarlyStopping: ("_run_early_stopping_check", "_should_skip_check", "_log_info"),
    ModelCheckpoint: ("_should_skip_saving_checkpoint", "_monitor_candidates", "_save_topk_checkpoint",
                      "_save_last_checkpoint"),
    Strategy: ("_configure_launcher",),
    DDPStrategy: ("_configure_launcher",),
    FSDPStrategy: ("_configure_launcher",),
    _SubprocessScriptLauncher: ("_call_children_scripts", "_check_can_spawn_children"),
}


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a ``LightningOptimizer`` (callback hooks may receive either); others unchanged.

    Uses the public ``LightningOptimizer.optimizer`` property instead of the private ``_optimizer`` attribute.
    """
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def module_trainer(module: Any) -> pl.Trainer | None:
    """The Trainer a LightningModule is attached to, or None (``LightningModule._trainer``).

    The public ``LightningModule.trainer`` raises when no Trainer is attached; this asks without raising, and
    answers None for a plain ``nn.Module``.
    """
    return getattr(module, "_trainer", None)


def cluster_environment(trainer: pl.Trainer) -> ClusterEnvironment | None:
    """The cluster environment Lightning's signal connector uses (``trainer._accelerator_connector``).

    A single-device strategy has no ``cluster_environment`` of its own; the accelerator connector always has one.
    """
    connector = getattr(trainer, "_accelerator_connector", None)
    return getattr(connector, "cluster_environment", None)


def inside_accumulation_window(trainer: pl.Trainer) -> bool:
    """Whether the current train batch accumulates gradients without an optimizer step
    (``trainer.fit_loop.epoch_loop._should_accumulate()``)."""
    return bool(trainer.fit_loop.epoch_loop._should_accumulate())


def time_based_validation(trainer: pl.Trainer) -> bool:
    """Whether validation runs on a wall-clock interval (``val_check_interval="00:00:10:00"`` or a timedelta / dict):
    ``trainer._val_check_time_interval`` is set."""
    return getattr(trainer, "_val_check_time_interval", None) is not None


def checkpoint_ranks_at_train_epoch_end(trainer: pl.Trainer) -> bool:
    """ModelCheckpoint's ``_should_save_on_train_epoch_end`` (Lightning 2.x) without its explicit override: not with
    time-based validation, nor with ``check_val_every_n_epoch != 1``; yes without validation batches; else when
    validation runs once per epoch (``val_check_interval == 1.0``)."""
    if time_based_validation(trainer) or trainer.check_val_every_n_epoch != 1:
        return False
    num_val = trainer.num_val_batches
    if (sum(num_val) if isinstance(num_val, list) else num_val) == 0:
        return True
    return bool(trainer.val_check_interval == 1.0)


def installed_checkpoint_io(strategy: Strategy) -> CheckpointIO | None:
    """The CheckpointIO set on ``strategy`` (``strategy._checkpoint_io``), or None when none was set.

    The public ``strategy.checkpoint_io`` creates (or resets the inner IO of) a default one when read; this only
    looks, so a callback can check that the IO it installed is still the one in place.
    """
    return strategy._checkpoint_io


def first_train_loader(trainer: pl.Trainer) -> Any:
    """``trainer.train_dataloader``, or the first of several (list, tuple or dict of loaders, nested); None if none."""
    loader: Any = trainer.train_dataloader
    while isinstance(loader, list | tuple | dict) and loader:
        loader = next(iter(loader.values())) if isinstance(loader, dict) else loader[0]
    return None if isinstance(loader, list | tuple | dict) else loader


def sharded_strategy_name(strategy: Any) -> str | None:
    """The name of ``strategy`` when it shards parameters across ranks (FSDP, ModelParallel, DeepSpeed stage 3);
    looked up by name, since the installed Lightning may lack some of these classes."""
    from lightning.pytorch import strategies

    kinds = tuple(getattr(strategies, name) for name in ("FSDPStrategy", "ModelParallelStrategy")
                  if hasattr(strategies, name))
    if isinstance(strategy, kinds):
        return type(strategy).__name__
    deepspeed = getattr(strategies, "DeepSpeedStrategy", None)
    if deepspeed is not None and isinstance(strategy, deepspeed) and bool(getattr(strategy, "zero_stage_3", False)):
        return "DeepSpeedStrategy (ZeRO stage 3)"
    return None


def saves_distributed_checkpoint(strategy: Any) -> bool:
    """Whether ``strategy`` writes each checkpoint as a directory of per-rank shards plus ``meta.pt``
    (``ModelParallelStrategy(save_distributed_checkpoint=True)``: its ``_save_distributed_checkpoint``)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy) and bool(strategy._save_distributed_checkpoint)


def legacy_state_key(callback: pl.Callback) -> Any:
    """The key Lightning < 1.5 stored a callback's state under (``Callback._legacy_state_key``: the class)."""
    return callback._legacy_state_key


def state_key_args(key: str, qualname: str) -> dict[str, Any] | None:
    """The keyword arguments in a ``state_key`` made by ``Callback._generate_state_key(**kwargs)``, or None.

    Lightning formats the key as ``f"{type(self).__qualname__}{kwargs!r}"``; None when ``key`` is not of that form
    for ``qualname`` (another class, or a key whose values have no literal repr).
    """
    if not key.startswith(qualname + "{"):
        return None
    try:
        value = ast.literal_eval(key[len(qualname):])
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def csv_logger_version(logger: CSVLogger) -> int | str | None:
    """The version a ``CSVLogger`` was given or has settled on (``logger._version``), without choosing one.

    The public ``logger.version`` picks the next free ``version_N`` when none is set, which is what a resumed run
    must avoid.
    """
    version: int | str | None = logger._version
    return version


def pin_csv_logger_version(logger: CSVLogger, version: int | str) -> None:
    """Make ``logger`` write into ``version`` (``logger._version``; the constructor argument, set afterwards)."""
    logger._version = version


def basic_subprocess_cmd() -> Sequence[str]:
    """The command line Lightning's script launcher starts child ranks with outside Hydra (``sys.argv`` again)."""
    return _basic_subprocess_cmd()


def set_num_threads_if_needed(num_processes: int) -> None:
    """Lightning's launcher rule: with ``OMP_NUM_THREADS`` unset, give each of ``num_processes`` ranks
    ``cpus // num_processes`` torch threads and set ``OMP_NUM_THREADS`` to it."""
    _set_num_threads_if_needed(num_processes=num_processes)


def set_strategy_launcher(strategy: Strategy, launcher: Any) -> None:
    """Replace the launcher a strategy configured (``strategy._launcher``; read it with ``strategy.launcher``)."""
    setattr(strategy, "_launcher", launcher)  # noqa: B010 - Strategy declares _launcher, the public view is read-only


def keep_signal_handlers_after_fit(trainer: pl.Trainer, handlers: dict[int, Any]) -> None:
    """Install ``handlers`` ({signum: handler}) now and keep them past the end of fit: Lightning's signal connector
    puts back the handlers it found at fit start when the Trainer tears down (``_SignalConnector.teardown``, after
    the callbacks' ``on_exception``); its record of them (``_original_handlers``) now holds these instead."""
    originals = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
        if originals:  # saved at fit start: restored at teardown
            originals[signum] = handler
