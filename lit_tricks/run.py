"""One training job from a composed Hydra config: data, model, module, callbacks, trainer; fit, test, report.

``scripts/train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
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

from lit_tricks.builders import build_callbacks, build_datamodule, build_loggers, build_model, build_module
from lit_tricks.callbacks.nan_guard import NaNGuard
from lit_tricks.compat import csv_logger_version, pin_csv_logger_version
from lit_tricks.config_checks import check_config, check_norm_groups
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.hydra_utils import hydra_config, is_multirun
from lit_tricks.records import error_chain, new_record, root_error, write_record
from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.jobs import job_guard, sweep_failure_value

# The build_* helpers live in lit_tricks.builders; they stay importable from here for compatibility.
__all__ = [
    "MonitorCheck", "build_callbacks", "build_datamodule", "build_loggers", "build_model", "build_module", "run_dir",
    "train",
]

log = logging.getLogger(__name__)
#: Logger of the end-of-run summary: printed to stdout and written to the run's train.log.
SUMMARY_LOGGER = "lit_tricks.summary"


def run_dir(cfg: DictConfig) -> Path:
    """This job's output directory (Hydra's run dir when running under Hydra)."""
    hc = hydra_config()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    return Path(str(OmegaConf.select(cfg, "paths.output_dir", default=os.getcwd())))


def _resume_path(cfg: DictConfig, out: Path) -> str | None:
    resume = cfg.get("resume")
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        from lit_tricks.fault.resume import find_resume_checkpoint

        found = find_resume_checkpoint(out)
        log.info("resume=auto: %s", found or "no checkpoint found, starting fresh")
        return found
    if not Path(str(resume)).is_file():
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint file; pass a .ckpt path, 'auto' or null")
    return str(resume)


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


def _attach_hydra_file_log() -> None:
    """Send Lightning's log lines (and ours) into Hydra's ``train.log`` too.

    Lightning gives its loggers their own console handler and stops propagation when it is imported before Hydra
    configured logging (always the case here), so Hydra's file handler never sees them.
    """
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in ("lightning.pytorch", "lightning.fabric", SUMMARY_LOGGER):
        lg = logging.getLogger(name)
        if name != SUMMARY_LOGGER and lg.propagate:
            continue  # Lightning was imported after Hydra set up logging: its lines reach the file already
        for handler in files:
            if handler not in lg.handlers:
                lg.addHandler(handler)
        if name == SUMMARY_LOGGER:
            lg.propagate = False
            lg.setLevel(logging.INFO)


def _latest_version(root: Path) -> int | None:
    versions = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(versions) if versions else None


def _continue_csv_logs(loggers: list[Any], resume_ckpt: str | None) -> None:
    """After a resume, keep writing the CSVLogger's newest ``version_N`` (rows up to the checkpoint's step kept).

    Lightning's CSV writer deletes an existing ``metrics.csv`` of its version; the rows logged before the checkpoint
    are read first and written back, so ``metrics.csv`` holds every epoch of the run: as many rows as the checkpoint
    says were written (``RNGState`` records it), else those of earlier steps. ``resume=auto`` without a checkpoint
    (killed before the first one) starts that version afresh.
    """
    from lightning.pytorch.loggers import CSVLogger

    from lit_tricks.fault.exact_resume import CSV_ROWS_KEY

    ckpt = torch.load(resume_ckpt, map_location="cpu", weights_only=True, mmap=True) if resume_ckpt else {}
    step, counts = int(ckpt.get("global_step", 0)), ckpt.get(CSV_ROWS_KEY) or {}
    for lg in loggers:
        if not isinstance(lg, CSVLogger) or csv_logger_version(lg) is not None:
            continue
        version = _latest_version(Path(lg.root_dir))
        if version is None:
            continue
        pin_csv_logger_version(lg, version)
        path = Path(lg.log_dir) / "metrics.csv"
        rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            kept = counts.get(f"{lg.name}/version_{version}")  # rows written when the checkpoint was (RNGState)
            earlier = [r for r in rows if not r.get("step") or float(r["step"]) < step]  # a checkpoint without it
            rows = rows[:kept] if kept is not None else earlier
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = lg.experiment  # deletes the old metrics.csv
        if rows:
            writer.metrics_keys = sorted({k for r in rows for k in r})
            with path.open("w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)


def _checkpoint_files(trainer: pl.Trainer, monitor: str) -> tuple[dict[str, str | None], float | None]:
    """(checkpoint files of the run, best score of the ModelCheckpoint watching ``monitor``)."""
    from lit_tricks.callbacks.ema import ema_checkpoint_path

    best, last, score = None, None, None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) == monitor and getattr(cb, "best_model_path", ""):
            best = best or str(cb.best_model_path)  # type: ignore[attr-defined]
            value = getattr(cb, "best_model_score", None)
            if score is None and value is not None and math.isfinite(float(value)):
                score = float(value)
        last_path = getattr(cb, "last_model_path", "") or (
            getattr(cb, "best_model_path", "") if getattr(cb, "monitor", None) is None else "")
        last = last or last_path or None

    def twin(path: str | None) -> str | None:
        return str(ema_checkpoint_path(path)) if path and ema_checkpoint_path(path).is_file() else None

    if best is None:  # no ModelCheckpoint on the monitor: Lightning's first checkpoint callback
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    return {"best": best, "best_ema": twin(best), "last": last, "last_ema": twin(last)}, score


def _evaluated_weights(trainer: pl.Trainer) -> str:
    from lit_tricks.callbacks.ema import EMAWeights

    uses_ema = any(isinstance(cb, EMAWeights) and cb.evaluate_with == "ema" for cb in trainer.callbacks)  # type: ignore[attr-defined]
    return "ema" if uses_ema else "raw"


class MonitorCheck(pl.Callback):
    """Fail right after the sanity-validation pass (before step 0) when ``monitor`` is not a logged metric.

    Without a sanity pass (``num_sanity_val_steps=0``, ``fast_dev_run``) the check runs after the first validation.
    A ``test/...`` monitor (the MNIST-1D recipes' objective: final weights, no validation split) is only logged by
    ``trainer.test`` after the fit; the run checks it there (``_fit_once``), so it is not looked for here.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self._checked = False

    def _check(self, trainer: pl.Trainer) -> None:
        if self._checked or trainer.fast_dev_run or self.monitor.startswith("test/"):  # type: ignore[attr-defined]
            return
        self._checked = True
        logged = sorted(trainer.callback_metrics)
        if self.monitor not in logged:
            from lit_tricks.config_checks import ConfigError

            raise ConfigError([f"monitor={self.monitor!r}: not logged by the module; logged metrics: {logged}"])

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)


def _fit_once(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one model; returns the record fields (metrics, objective, files) of this fit."""
    out = run_dir(cfg)
    monitor = str(cfg.get("monitor", "val/loss"))
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    check_norm_groups(OmegaConf.select(cfg, "module.norm", default=None), model)
    module = build_module(cfg, model, dm)
    loggers = build_loggers(cfg)
    callbacks = [MonitorCheck(monitor), *build_callbacks(cfg)]
    if not loggers:  # LearningRateMonitor refuses to run without a logger; with logger=none there is nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    resume = _resume_path(cfg, out)
    if resume is not None or cfg.get("resume") == "auto":
        _continue_csv_logs(loggers, resume)
    trainer = build_trainer(cfg, callbacks, loggers or False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(OmegaConf.to_yaml(resolved).encode(), out / "config_resolved.yaml")
    for lg in trainer.loggers:
        lg.log_hyperparams(_flatten(resolved))  # type: ignore[arg-type]
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, NaNGuard) and callback.stop_reason:  # the guard stopped a diverged run: it failed
            raise RuntimeError(callback.stop_reason)
    fit_s = time.perf_counter() - started
    metrics = _scalar_metrics(trainer)
    files, best_score = _checkpoint_files(trainer, monitor)
    weights = _evaluated_weights(trainer)
    # the file whose weights produced a number: the -ema twin when the EMA was evaluated
    best_file = (files["best_ema"] or files["best"]) if weights == "ema" else files["best"]
    last_file = (files["last_ema"] or files["last"]) if weights == "ema" else files["last"]
    reproduced: dict[str, str | None] = {k: last_file for k in metrics}  # last-epoch values
    tested = False
    if cfg.get("test", True) and not trainer.interrupted:
        trainer.test(module, datamodule=dm, ckpt_path=files["best"] or None, verbose=False)
        tested = True
        test_metrics = {k: v for k, v in _scalar_metrics(trainer).items() if k.startswith("test/")}
        metrics.update(test_metrics)
        reproduced.update({k: (best_file if files["best"] else last_file) for k in test_metrics})
    if best_score is not None:
        objective, source = best_score, "best_checkpoint"
    else:
        if monitor not in metrics:
            raise KeyError(f"monitor={monitor!r} was not logged; logged metrics: {sorted(metrics)}")
        objective, source = metrics[monitor], "last_epoch"
    reproduced["objective"] = best_file if source == "best_checkpoint" else last_file
    total_s = time.perf_counter() - started
    return {"metrics": metrics, "objective": objective, "objective_source": source, "checkpoints": files,
            "best_ckpt": reproduced["objective"] or "", "reproduced_by": reproduced, "evaluated_weights": weights,
            "run_dir": str(out), "interrupted": bool(trainer.interrupted), "world_size": int(trainer.world_size),
            "num_nodes": int(trainer.num_nodes), "is_global_zero": trainer.is_global_zero,
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
    from lit_tricks.config_checks import ConfigError

    if isinstance(err, ConfigError):
        return "ConfigError: " + "; ".join(err.problems)
    return root_error(err)


def _remove_rejected_run_dir(out: Path) -> None:
    """A run rejected before it started leaves nothing: remove ``out`` if it holds only Hydra's files."""
    if not out.is_dir():
        return
    hydra_only = all(p.name in (".hydra",) or p.suffix == ".log" for p in out.iterdir())
    if not hydra_only:
        return
    for lg in (logging.getLogger(), *(logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric",
                                                                      SUMMARY_LOGGER))):
        for handler in list(lg.handlers):  # the job's train.log: closed and detached before its folder goes
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out.resolve():
                lg.removeHandler(handler)
                handler.close()
    shutil.rmtree(out, ignore_errors=True)


def _log_traceback(err: BaseException) -> None:
    """The full traceback to the run's log file only (the console gets the one-line root cause)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "job failed: %s", (_error_line(err),),
                               (type(err), err, err.__traceback__))
    for handler in files:
        handler.handle(record)


def train(cfg: DictConfig) -> float:
    """Validate, fit, test; write ``metrics.json`` (see :mod:`lit_tricks.records`); return the objective.

    The objective is the monitored metric's value at the best kept checkpoint (the last epoch's value when no
    checkpoint watches the monitor). In a multirun (sweep), a job that raises, a rejected config included, is
    recorded as failed (the root error and its cause chain in ``metrics.json``) and returns nan (Hydra's basic
    sweeper) or re-raises (Optuna records a failed trial), so the sweep goes on; a single run re-raises, and a
    config rejected at start-up leaves no run directory behind.
    """
    from lit_tricks.config_checks import ConfigError, SweepConfigError

    out = run_dir(cfg)
    _attach_hydra_file_log()
    # torchdata's StatefulDataLoader (our resumable loaders) calls a deprecated torch API on every epoch
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    monitor = str(cfg.get("monitor", "val/loss"))  # the default of conf/train.yaml
    record = new_record(monitor, str(cfg.get("monitor_mode", "min")), overrides=_overrides(), run_dir=str(out))
    try:
        check_config(cfg)
        with job_guard(cfg):
            result = _cross_validate(cfg, _fit_once) if cfg.get("cv", False) else _fit_once(cfg)
        result["timings"] = {**record["timings"], **result.get("timings", {})}
        record.update(result)
    except SweepConfigError:
        raise  # wrong for every job of the sweep: refuse the sweep at its first job
    except Exception as err:
        status = "pruned" if type(err).__name__ == "TrialPruned" else "failed"  # optuna.TrialPruned: OptunaPruning
        record.update(status=status, error=_error_line(err), error_chain=error_chain(err), objective=None)
        rejected = isinstance(err, ConfigError) and not is_multirun()
        if status == "failed":
            _log_traceback(err)
        if rejected:
            _remove_rejected_run_dir(out)
        elif _is_rank_zero():
            write_record(out / "metrics.json", record)
        if not is_multirun():
            raise
        log.error("job failed, the sweep goes on: %s", record["error"])
        return sweep_failure_value(err)
    if record.pop("is_global_zero", True):
        write_record(out / "metrics.json", record)
        _print_summary(record)
    return float(record["objective"])


def _print_summary(record: dict[str, Any]) -> None:
    m = record["metrics"]
    files = record.get("checkpoints") or {}
    parts = [f"{k}={m[k]:.4f}" for k in ("val/acc", "val/acc_ema", "test/acc", "test/acc_ema") if k in m]
    lines = ["lit_tricks: " + ("  ".join(parts) or "no accuracy logged"),
             f"lit_tricks: objective {record['monitor']}={record['objective']:.4f} ({record['objective_source']})",
             f"lit_tricks: checkpoint {record.get('best_ckpt') or '(none)'}"
             + (" (EMA weights; evaluated numbers come from this file)" if record.get("evaluated_weights") == "ema"
                and files.get("best_ema") else "")]
    if record.get("evaluated_weights") == "ema" and files.get("best_ema") and files.get("best"):
        lines.append(f"lit_tricks: resume from {files['best']} (raw weights + training state)")
    lines.append(f"lit_tricks: run directory {record.get('run_dir')}")
    summary = logging.getLogger(SUMMARY_LOGGER)
    for line in lines:
        print(line)
        summary.info(line)
