"""Every private Lightning API lit_tricks relies on, in one place, each behind a small function.

Lightning keeps no promise about names with a leading underscore; lit_tricks supports only the Lightning it is
tested against (:data:`TESTED_LIGHTNING`, the floor in ``pyproject.toml``), and ``tests/test_compat.py`` exercises
every function here against the installed Lightning, so an upgrade that moves one of these internals fails there,
by name, instead of somewhere inside a fit. This module imports only Lightning and torch.

Not gathered here, on purpose:

- ``Callback._generate_state_key``: protected by name, but Lightning's documented way to define a callback's
  ``state_key`` (its docs on callback state use it), so the callbacks call it directly. Its *output format*, which
  :mod:`lit_tricks.fault.state_keys` reads back, is not documented: :func:`state_key_args` parses it here.
- Private methods that lit_tricks *overrides* (Lightning calls them, so they keep their names): they are listed in
  :data:`PRIVATE_OVERRIDES`, and the test checks that Lightning still defines each of them.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync

__all__ = [
    "PRIVATE_OVERRIDES",
    "TESTED_LIGHTNING",
    "CheckpointPath",
    "apply_pending_train_loader_state",
    "SubprocessScriptLauncher",
    "basic_subprocess_cmd",
    "call_epoch_start",
    "batch_end_is_resumable",
    "cluster_environment",
    "csv_logger_version",
    "epoch_results_state",
    "epoch_start_skipped",
    "inside_accumulation_window",
    "installed_checkpoint_io",
    "legacy_state_key",
    "logged_metrics_state",
    "logs_this_step",
    "module_trainer",
    "pin_csv_logger_version",
    "restart_train_iterator",
    "restore_epoch_results",
    "restore_logged_metrics",
    "rows_logged_after_save",
    "set_num_threads_if_needed",
    "set_strategy_launcher",
    "state_key_args",
    "unwrap_optimizer",
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
#: reuses the skip rule and the rank-aware logger. The DDP/FSDP strategies and the script launcher:
#: :mod:`lit_tricks.trainers.strategies` swaps in its launcher after ``_configure_launcher`` and replaces the
#: launcher's ``_call_children_scripts`` (which calls ``_check_can_spawn_children``).
PRIVATE_OVERRIDES: dict[type, tuple[str, ...]] = {
    EarlyStopping: ("_run_early_stopping_check", "_should_skip_check", "_log_info"),
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


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step metrics at this batch (``trainer._logger_connector.should_update_logs``).

    On other batches a ``self.log(on_step=True)`` value is discarded at batch end, so a callback can skip computing
    it. True when the connector is missing (log, to be safe).
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


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


def batch_end_is_resumable(trainer: pl.Trainer) -> bool:
    """Whether a checkpoint written now, at the end of a training batch, resumes exactly like the uninterrupted run.

    Lightning resumes a checkpoint taken in ``on_train_batch_end`` as if everything that follows that batch had run:
    the validation due after it is skipped (``val_loop.increment_progress_to_evaluation_end``) and after the epoch's
    last batch (or the one reaching ``max_steps``) the epoch's validation, ``on_train_epoch_end`` and the next
    epoch's ``on_train_epoch_start`` are skipped too. So such a batch end is no exact resume point; the end of the
    validation (``on_validation_end``) or of the epoch is. Decided with the epoch loop's own checks
    (``_should_check_val_fx``, ``_is_training_done``), as Lightning decides right after this hook.
    """
    loop = trainer.fit_loop.epoch_loop
    if loop._is_training_done or loop.batch_progress.is_last_batch:
        return False
    return not loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def rows_logged_after_save(trainer: pl.Trainer) -> int:
    """How many rows Lightning sends to the loggers right after a checkpoint written now, which a fit resumed from that
    checkpoint never logs again: inside ``on_train_batch_end`` the batch's step row
    (``_logger_connector.update_train_step_metrics``), inside ``on_train_epoch_end`` the epoch row
    (``update_train_epoch_metrics``); 0 elsewhere (after a validation the resumed fit logs what follows itself)."""
    if not trainer.training or not trainer.loggers or trainer._results is None:
        return 0
    loop = trainer.fit_loop
    batches, epochs = loop.epoch_loop.batch_progress.current, loop.epoch_progress.current
    connector = trainer._logger_connector
    if epochs.processed > epochs.completed:  # inside on_train_epoch_end
        return int(bool(trainer._results.metrics(False)["log"]))
    if batches.completed >= batches.processed:  # not inside a training batch's end hooks
        return 0
    if trainer.lightning_module.automatic_optimization and loop.epoch_loop._should_accumulate():
        return 0
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return 0
    return int(bool(trainer._results.metrics(True)["log"]))


def time_based_validation(trainer: pl.Trainer) -> bool:
    """Whether validation runs on a wall-clock interval (``val_check_interval="00:00:10:00"`` or a timedelta / dict):
    ``trainer._val_check_time_interval`` is set."""
    return getattr(trainer, "_val_check_time_interval", None) is not None


def apply_pending_train_loader_state(trainer: pl.Trainer) -> bool:
    """Give the train loader the data position of the checkpoint being resumed when Lightning has not; True if it did.

    Lightning stashes the loader states of a checkpoint (``fit_loop._combined_loader_states_to_load``) and applies
    them when ``fit_loop.setup_data`` builds the loader. A loader built *before* the restore (``configure_optimizers``
    reading ``trainer.estimated_stepping_batches``, as a schedule sized by the run does) is never rebuilt, so the
    stash is dropped and the epoch restarts from its first batch (Lightning #20550). This loads the stash into the
    existing loader and creates its iterator again (what Lightning's own ``setup_data`` does; the fix proposed in
    Lightning PR #21765). Call it after the restore, before the first batch is fetched (``on_train_start``).
    """
    loop = trainer.fit_loop
    if not loop.restarting or not loop._combined_loader_states_to_load or loop._combined_loader is None:
        return False
    loop._load_combined_loader_states()
    if loop._data_fetcher is not None:
        iter(loop._data_fetcher)
    return True


_REDUCTIONS: dict[str, Any] = {"mean": torch.mean, "max": torch.max, "min": torch.min, "sum": torch.sum}


def epoch_results_state(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """What the training epoch has accumulated of the values logged with ``on_epoch=True`` (plain types and tensors).

    Lightning keeps them in the training loop's ``_ResultCollection`` (``fit_loop.epoch_loop._results``), which no
    checkpoint holds: after a mid-epoch resume ``train/loss_epoch`` would average only the batches after the restart.
    Tensor values only (a ``torchmetrics.Metric`` logged in training keeps its own state).
    """
    out: list[dict[str, Any]] = []
    for key, metric in trainer.fit_loop.epoch_loop._results.items():
        meta = metric.meta
        if not metric.is_tensor or not meta.on_epoch or metric.has_reset or not metric._update_count:
            continue
        reduce = next(name for name in ("mean", "max", "min", "sum") if getattr(meta, f"is_{name}_reduction"))
        out.append({
            "key": key, "fx": meta.fx, "name": meta.name, "prog_bar": meta.prog_bar, "logger": meta.logger,
            "on_step": meta.on_step, "reduce": reduce, "enable_graph": meta.enable_graph,
            "add_dataloader_idx": meta.add_dataloader_idx, "dataloader_idx": meta.dataloader_idx,
            "metric_attribute": meta.metric_attribute, "sync_dist": bool(meta.sync._should),
            "rank_zero_only": bool(meta.sync.rank_zero_only), "updates": int(metric._update_count),
            "value": metric.value.detach().cpu().clone(),
            "batch_size": metric.cumulated_batch_size.detach().cpu().clone() if reduce == "mean" else None,
        })
    return out


def restore_epoch_results(trainer: pl.Trainer, entries: list[dict[str, Any]]) -> None:
    """Put :func:`epoch_results_state`'s values back into the training loop's results before the first resumed batch,
    and tell the logger connector this epoch is under way (else the first ``self.log`` of the epoch resets them)."""
    if not entries:
        return
    results = trainer.fit_loop.epoch_loop._results
    device = trainer.strategy.root_device
    for e in entries:
        meta = _Metadata(fx=e["fx"], name=e["name"], prog_bar=e["prog_bar"], logger=e["logger"], on_step=e["on_step"],
                         on_epoch=True, reduce_fx=_REDUCTIONS[e["reduce"]], enable_graph=e["enable_graph"],
                         add_dataloader_idx=e["add_dataloader_idx"], dataloader_idx=e["dataloader_idx"],
                         metric_attribute=e["metric_attribute"])
        meta.sync = _Sync(_should=e["sync_dist"], fn=trainer.strategy.reduce, _group=None,
                          rank_zero_only=e["rank_zero_only"])
        metric = _ResultMetric(meta, is_tensor=True)
        metric.value = e["value"].to(device)
        if e["batch_size"] is not None:
            metric.cumulated_batch_size = e["batch_size"].to(device)
        metric._update_count = int(e["updates"])
        metric.has_reset = False
        results[e["key"]] = metric
    trainer._logger_connector._first_loop_iter = True  # the next batch is not the epoch's first


def logged_metrics_state(trainer: pl.Trainer) -> dict[str, dict[str, Any]]:
    """The values callbacks and loggers see now (``trainer.callback_metrics``, ``trainer.logged_metrics``).

    No checkpoint holds them: a fit resumed from a checkpoint taken at the end of a validation runs that epoch's
    end (``EarlyStopping``, ``ModelCheckpoint`` or a plateau scheduler reading ``val/loss`` there) without them.
    """
    def scalars(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in values.items() if isinstance(v, torch.Tensor)}

    return {"callback": scalars(trainer.callback_metrics), "logged": scalars(trainer.logged_metrics)}


def restore_logged_metrics(trainer: pl.Trainer, state: dict[str, dict[str, Any]]) -> None:
    """Put :func:`logged_metrics_state`'s values back (``trainer._logger_connector``'s ``_callback_metrics`` and
    ``_logged_metrics``); values logged since override them as usual."""
    connector = trainer._logger_connector
    device = trainer.strategy.root_device
    connector._callback_metrics.update({k: v.to(device) for k, v in state.get("callback", {}).items()})
    connector._logged_metrics.update({k: v.to(device) for k, v in state.get("logged", {}).items()})


def epoch_start_skipped(trainer: pl.Trainer) -> bool:
    """Whether this fit resumes from a checkpoint taken at an epoch's last batch end, so that it starts the next
    epoch without calling ``on_train_epoch_start`` (Lightning 2.6: ``fit_loop.on_advance_start`` skips the hooks
    while ``restarted_mid_epoch``, a stage it also gives that checkpoint, and counts the epoch neither ready nor
    started). After any other mid-epoch checkpoint the epoch's start hooks ran before the save. Valid from
    ``on_train_start`` to the first batch."""
    loop = trainer.fit_loop
    if not loop.restarted_mid_epoch:
        return False
    return bool(loop.epoch_loop.restarted_on_train_batch_end and loop.epoch_loop.batch_progress.is_last_batch)


def call_epoch_start(trainer: pl.Trainer) -> None:
    """What ``fit_loop.on_advance_start`` does at an epoch's start, hooks and progress counters: ``ready`` and
    ``started`` of the epoch progress, ``on_train_epoch_start`` of every callback, then of the LightningModule."""
    from lightning.pytorch.trainer import call

    progress = trainer.fit_loop.epoch_progress
    progress.increment_ready()
    call._call_callback_hooks(trainer, "on_train_epoch_start")
    call._call_lightning_module_hook(trainer, "on_train_epoch_start")
    progress.increment_started()


def restart_train_iterator(trainer: pl.Trainer) -> bool:
    """Create the train dataloader's iterator again (``iter(trainer.fit_loop._data_fetcher)``); False if none.

    Creating a ``DataLoader`` iterator draws its base seed from torch's RNG; :class:`lit_tricks.callbacks.RNGState`
    calls this after restoring the RNG so that a resumed run draws the same seed as the uninterrupted one.
    """
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


def installed_checkpoint_io(strategy: Strategy) -> CheckpointIO | None:
    """The CheckpointIO set on ``strategy`` (``strategy._checkpoint_io``), or None when none was set.

    The public ``strategy.checkpoint_io`` creates (or resets the inner IO of) a default one when read; this only
    looks, so a callback can check that the IO it installed is still the one in place.
    """
    return strategy._checkpoint_io


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

