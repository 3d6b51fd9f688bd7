"""The fit loop's private state that exact resume reads and restores (part of :mod:`lit_tricks.compat`).

Lightning's restart rules (``fit_loop.reset``, ``restarted_mid_epoch``, ``restarted_on_train_batch_end``, the epoch
loop's ``increment_progress_to_evaluation_end``), the train loader states it stashes, the logger connector's metrics
and the training loop's ``_ResultCollection``: what :mod:`lit_tricks.fault.exact_resume`, ``RNGState``,
``Preemption`` and ``ModelCheckpoint`` need of them, each behind a small function tested in ``tests/test_compat.py``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync

__all__ = [
    "apply_pending_train_loader_state",
    "batch_end_is_resumable",
    "call_epoch_start",
    "epoch_results_state",
    "epoch_start_skipped",
    "logged_metrics_state",
    "restart_train_iterator",
    "restore_epoch_results",
    "restore_logged_metrics",
    "rows_logged_after_save",
]


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
    fetcher: Any = trainer.fit_loop._data_fetcher
    return not loop._should_check_val_fx(fetcher)


def rows_logged_after_save(trainer: pl.Trainer) -> int:
    """How many rows Lightning sends to the loggers right after a checkpoint written now, which a fit resumed from that
    checkpoint never logs again: inside ``on_train_batch_end`` the batch's step row
    (``_logger_connector.update_train_step_metrics``), inside ``on_train_epoch_end`` the epoch row
    (``update_train_epoch_metrics``); 0 elsewhere (after a validation the resumed fit logs what follows itself)."""
    if not trainer.training or not trainer.loggers or trainer._results is None:
        return 0
    loop = trainer.fit_loop
    batches: Any = loop.epoch_loop.batch_progress.current  # trackers typed as their base class
    epochs: Any = loop.epoch_progress.current
    connector = trainer._logger_connector
    if epochs.processed > epochs.completed:  # inside on_train_epoch_end
        return int(_will_log(trainer, on_step=False))
    if batches.completed >= batches.processed:  # not inside a training batch's end hooks
        return 0
    if trainer.lightning_module.automatic_optimization and loop.epoch_loop._should_accumulate():
        return 0
    if not (connector.should_update_logs or getattr(trainer, "fast_dev_run", False)):
        return 0
    return int(_will_log(trainer, on_step=True))


def _will_log(trainer: pl.Trainer, on_step: bool) -> bool:
    """Whether the training results hold a value for the loggers (``_ResultCollection.metrics(on_step)["log"]`` non
    empty), read without computing one: an epoch value's ``compute`` syncs the ranks, and only rank 0 asks."""
    results: Any = trainer._results
    for _, metric in results.valid_items():
        meta = metric.meta
        if not meta.logger or not (meta.on_step if on_step else meta.on_epoch):
            continue
        if not on_step or metric._forward_cache is not None:
            return True
    return False


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
