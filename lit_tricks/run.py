"""One training job from a composed Hydra config: data, model, module, callbacks, trainer; fit, test, report.

``scripts/train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_tricks import provenance
from lit_tricks.builders import build_callbacks, build_datamodule, build_loggers, build_model, build_module
from lit_tricks.callback_protocols import fit_failure
from lit_tricks.config_checks import ConfigError, check_config, check_norm_groups
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.fault.resume import continue_csv_logs, resolve_resume
from lit_tricks.hydra_utils import hydra_config, is_multirun
from lit_tricks.job_log import attach_hydra_file_log, log_traceback, print_summary, remove_rejected_run_dir
from lit_tricks.records import error_chain, new_record, previous_record, root_error, write_record
from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.hydra_job import job_guard, sweep_failure_value
from lit_tricks.validation import ArgumentError

__all__ = ["MonitorCheck", "run_dir", "train"]

log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    """This job's output directory (Hydra's run dir when running under Hydra)."""
    hc = hydra_config()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    return Path(str(OmegaConf.select(cfg, "paths.output_dir", default=os.getcwd())))


def _scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, int | float):
            out[key] = float(value)
    return out


def _overrides() -> list[str]:
    hc = hydra_config()
    return list(hc.overrides.task) if hc is not None else []


class MonitorCheck(pl.Callback):
    """Fail right after the sanity-validation pass (before step 0) when ``monitor`` is not a logged metric.

    Without a sanity pass (``num_sanity_val_steps=0``, ``fast_dev_run``) the check runs after the first validation.
    A ``test/...`` monitor (the MNIST-1D recipes' objective: final weights, no validation split) is only logged by
    ``trainer.test`` after the fit; the run checks it there (``_fit_once``), so it is not looked for here.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self._checked = False

    @staticmethod
    def looks_for(monitor: str) -> bool:
        """Whether it checks ``monitor`` during the fit (a ``test/...`` one is checked after ``trainer.test``)."""
        return not monitor.startswith("test/")

    def _check(self, trainer: pl.Trainer) -> None:
        if self._checked or trainer.fast_dev_run or not self.looks_for(self.monitor):  # type: ignore[attr-defined]
            return
        self._checked = True
        logged = sorted(trainer.callback_metrics)
        if self.monitor not in logged:
            raise ConfigError([f"monitor={self.monitor!r}: not logged by the module; logged metrics: {logged}"])

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)


def _monitor_check(monitor: str) -> list[pl.Callback]:
    """``[MonitorCheck(monitor)]``, or nothing for a ``test/...`` monitor, which it never looks for: Lightning
    dispatches every per-step hook to every callback (~20 us a step for one that does nothing, on a 2-core EPYC)."""
    return [MonitorCheck(monitor)] if MonitorCheck.looks_for(monitor) else []


def _fit_once(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one model; returns the record fields (metrics, objective, files) of this fit."""
    out = run_dir(cfg)
    monitor = str(cfg.get("monitor", "val/loss"))
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True)
    from hydra.utils import instantiate  # conf/callbacks/posthoc_ema.yaml: built (arguments checked) before the fit

    try:  # a component that refuses its config (ArgumentError naming the key) is a rejected config
        dm = build_datamodule(cfg)
        model = build_model(cfg, dm)
        check_norm_groups(OmegaConf.select(cfg, "module.norm", default=None), model)
        module = build_module(cfg, model, dm)
        loggers = build_loggers(cfg)
        callbacks = [*_monitor_check(monitor), *build_callbacks(cfg)]
        posthoc = instantiate(cfg.posthoc_ema) if cfg.get("posthoc_ema") else None
        resume = resolve_resume(cfg.get("resume"), out)
    except ArgumentError as err:
        raise ConfigError([f"{err.arg}={err.value!r}: {err.problem}"]) from err
    if not loggers:  # LearningRateMonitor refuses to run without a logger; with logger=none there is nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if resume is not None or cfg.get("resume") == "auto":
        continue_csv_logs(loggers, resume)
    trainer = build_trainer(cfg, callbacks, loggers or False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(OmegaConf.to_yaml(resolved).encode(), out / "config_resolved.yaml")
    for lg in trainer.loggers:
        lg.log_hyperparams(_flatten(resolved))  # type: ignore[arg-type]
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
    except BaseException as err:
        if type(err).__name__ == "TrialPruned":  # where the sweeper's pruner stopped it (the record's pruned_at)
            value = trainer.callback_metrics.get(monitor)
            err.pruned_at = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step),  # type: ignore[attr-defined]
                             "value": None if value is None else float(value)}
        raise
    failure = fit_failure(trainer.callbacks)  # type: ignore[attr-defined]
    if failure:  # e.g. NaNGuard stopped a diverged run: it failed
        raise RuntimeError(failure)
    fit_s = time.perf_counter() - started
    metrics = _scalar_metrics(trainer)
    if resume is not None:  # a finished run resumed: the fit logged nothing new; keep the last epoch's values
        metrics = {**(previous_record(out / "metrics.json").get("metrics") or {}), **metrics}
    files, best_score = provenance.checkpoint_files(trainer, monitor)
    tested: set[str] = set()
    if cfg.get("test", True) and not trainer.interrupted:
        trainer.test(module, datamodule=dm, ckpt_path=files["best"] or None, verbose=False)
        test_metrics = {k: v for k, v in _scalar_metrics(trainer).items() if k.startswith("test/")}
        metrics.update(test_metrics)
        tested = set(test_metrics)
    reproduced = provenance.reproduced_by(metrics, trainer, module, files, tested)
    if posthoc is not None and trainer.is_global_zero and not trainer.interrupted:  # EMA length chosen post hoc
        metrics.update(posthoc(trainer, module, dm, out / "posthoc_ema"))
    if best_score is not None:
        objective, source = best_score, "best_checkpoint"
    else:
        if monitor not in metrics:
            raise KeyError(f"monitor={monitor!r} was not logged; logged metrics: {sorted(metrics)}")
        objective, source = metrics[monitor], "last_epoch"
    if not math.isfinite(objective):
        raise FloatingPointError(f"monitor={monitor!r} is {objective} at every validation: no objective to report "
                                 "(the run diverged; lower the learning rate or add callbacks.nan_guard)")
    reproduced["objective"] = reproduced.get(monitor) if source == "last_epoch" else provenance.reproduced_by(
        {monitor: objective}, trainer, module, files, {monitor})[monitor]
    weights = provenance.weights_of(monitor, trainer, module)
    total_s = time.perf_counter() - started
    return {"metrics": metrics, "objective": objective, "objective_source": source, "checkpoints": files,
            "best_ckpt": reproduced["objective"] or "", "reproduced_by": reproduced, "evaluated_weights": weights,
            "resumed_from": resume, "run_dir": str(out), "interrupted": bool(trainer.interrupted),
            "world_size": int(trainer.world_size), "num_nodes": int(trainer.num_nodes),
            "is_global_zero": trainer.is_global_zero,
            "timings": {"fit_s": fit_s, "test_s": (total_s - fit_s) if tested else 0.0, "total_s": total_s}}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            flat.update(_flatten(v, f"{prefix}{k}/"))
    else:
        flat[prefix.rstrip("/")] = d if isinstance(d, int | float | str | bool) or d is None else str(d)
    return flat


def _cross_validate(cfg: DictConfig, fit: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Run every fold of ``data.num_folds`` inside this job; the objective is the mean of the folds' objectives."""
    num_folds = int(OmegaConf.select(cfg, "data.num_folds", default=5))
    per_fold: list[dict[str, Any]] = []
    for fold in range(num_folds):
        fold_cfg = cfg.copy()
        with open_dict(fold_cfg):
            fold_cfg.data.fold = fold
            fold_cfg.paths.output_dir = str(run_dir(cfg) / f"fold{fold}")
        log.info("cross-validation: fold %d/%d", fold + 1, num_folds)
        per_fold.append(fit(fold_cfg))
    keys = set.intersection(*(set(r["metrics"]) for r in per_fold))
    metrics: dict[str, float] = {}
    for key in sorted(keys):
        values = [r["metrics"][key] for r in per_fold]
        metrics[key] = statistics.fmean(values)
        metrics[f"{key}_std"] = statistics.pstdev(values)
    last = per_fold[-1]
    folds = [{k: r[k] for k in ("metrics", "objective", "objective_source", "checkpoints", "reproduced_by")}
             for r in per_fold]
    return {**last, "metrics": metrics, "objective": statistics.fmean(r["objective"] for r in per_fold),
            "objective_source": "cv_mean", "folds": folds, "reproduced_by": {}, "checkpoints": {},
            "best_ckpt": [r["best_ckpt"] for r in per_fold],
            "timings": {"total_s": sum(r["timings"]["total_s"] for r in per_fold)}}


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0 and int(
        os.environ.get("NODE_RANK", "0")) == 0


def _error_line(err: BaseException) -> str:
    """The root cause in one line; a rejected config lists all its problems."""
    if isinstance(err, ConfigError):
        return "ConfigError: " + "; ".join(err.problems)
    return root_error(err)


def train(cfg: DictConfig) -> float:
    """Validate, fit, test; write ``metrics.json`` (see :mod:`lit_tricks.records`); return the objective.

    The objective is the monitored metric's value at the best kept checkpoint (the last epoch's value when no
    checkpoint watches the monitor). In a multirun (sweep), a job that raises, a rejected config included, is
    recorded as failed (the root error and its cause chain in ``metrics.json``) and returns nan (Hydra's basic
    sweeper) or re-raises (Optuna records a failed trial), so the sweep goes on; a single run re-raises, and a
    config rejected at start-up leaves no run directory behind.
    """
    from lit_tricks.config_checks import SweepConfigError

    out = run_dir(cfg)
    attach_hydra_file_log()
    # torchdata's StatefulDataLoader (our resumable loaders) calls a deprecated torch API on every epoch
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    monitor = str(cfg.get("monitor", "val/loss"))  # the default of conf/train.yaml
    record = new_record(monitor, str(cfg.get("monitor_mode", "min")), overrides=_overrides(), run_dir=str(out))
    before = set(out.rglob("*")) if out.is_dir() else set()
    try:
        if cfg.get("monitor_mode", "min") not in ("min", "max"):  # read here (the record) and by every callback
            raise ConfigError([f"monitor_mode={cfg.get('monitor_mode')!r}: must be one of ['min', 'max']"])
        check_config(cfg)
        with job_guard(cfg):
            result = _cross_validate(cfg, _fit_once) if cfg.get("cv", False) else _fit_once(cfg)
        result["timings"] = {**record["timings"], **result.get("timings", {})}
        record.update(result)
    except SweepConfigError:
        raise  # wrong for every job of the sweep: refuse the sweep at its first job
    except Exception as err:
        status = "pruned" if type(err).__name__ == "TrialPruned" else "failed"  # optuna.TrialPruned: OptunaPruning
        record.update(status=status, error=_error_line(err), error_chain=error_chain(err), objective=None,
                      pruned_at=getattr(err, "pruned_at", None))
        rejected = isinstance(err, ConfigError) and not is_multirun()
        if status == "failed":
            log_traceback(err, record["error"], __name__)
        if rejected:
            remove_rejected_run_dir(out, before)
        elif _is_rank_zero():
            write_record(out / "metrics.json", record)
        if not is_multirun():
            raise
        log.error("job failed, the sweep goes on: %s", record["error"])
        return sweep_failure_value(err)
    if record.pop("is_global_zero", True):
        write_record(out / "metrics.json", record)
        print_summary(record)
    return float(record["objective"])
