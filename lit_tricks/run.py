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

from lit_tricks import provenance
from lit_tricks.builders import build_callbacks, build_datamodule, build_loggers, build_model, build_module
from lit_tricks.callbacks.nan_guard import NaNGuard
from lit_tricks.compat import csv_logger_version, pin_csv_logger_version
from lit_tricks.config_checks import ConfigError, check_config, check_norm_groups
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.hydra_utils import hydra_config, is_multirun
from lit_tricks.records import error_chain, new_record, root_error, write_record
from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.jobs import job_guard, sweep_failure_value
from lit_tricks.validation import ArgumentError

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
        raise ConfigError([f"resume={resume!r}: no such checkpoint file; pass a .ckpt path, 'auto' or null"])
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


def _continue_csv_logs(loggers: list[Any], resume_ckpt: str) -> None:
    """After a resume, keep writing the CSVLogger's newest ``version_N`` (rows up to the checkpoint's step kept).

    Lightning's CSV writer deletes an existing ``metrics.csv`` of its version; the rows logged before the checkpoint
    are read first and written back, so ``metrics.csv`` holds every epoch of the run.
    """
    from lightning.pytorch.loggers import CSVLogger

    step = int(torch.load(resume_ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
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
                rows = [r for r in csv.DictReader(fh) if not r.get("step") or float(r["step"]) < step]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = lg.experiment  # deletes the old metrics.csv
        if rows:
            writer.metrics_keys = sorted({k for r in rows for k in r})
            with path.open("w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)


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
    try:  # a component that refuses its config (ArgumentError naming the key) is a rejected config
        dm = build_datamodule(cfg)
        model = build_model(cfg, dm)
        check_norm_groups(OmegaConf.select(cfg, "module.norm", default=None), model)
        module = build_module(cfg, model, dm)
        loggers = build_loggers(cfg)
        callbacks = [MonitorCheck(monitor), *build_callbacks(cfg)]
    except ArgumentError as err:
        raise ConfigError([str(err)]) from err
    if not loggers:  # LearningRateMonitor refuses to run without a logger; with logger=none there is nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    resume = _resume_path(cfg, out)
    if resume is not None:
        _continue_csv_logs(loggers, resume)
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
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, NaNGuard) and callback.stop_reason:  # the guard stopped a diverged run: it failed
            raise RuntimeError(callback.stop_reason)
    fit_s = time.perf_counter() - started
    metrics = _scalar_metrics(trainer)
    if resume is not None:  # a finished run resumed: the fit logged nothing new; keep the last epoch's values
        metrics = {**(_previous(out).get("metrics") or {}), **metrics}
    files, best_score = provenance.checkpoint_files(trainer, monitor)
    tested: set[str] = set()
    if cfg.get("test", True) and not trainer.interrupted:
        trainer.test(module, datamodule=dm, ckpt_path=files["best"] or None, verbose=False)
        test_metrics = {k: v for k, v in _scalar_metrics(trainer).items() if k.startswith("test/")}
        metrics.update(test_metrics)
        tested = set(test_metrics)
    reproduced = provenance.reproduced_by(metrics, trainer, module, files, tested)
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
    total_s = time.perf_counter() - started
    weights = provenance.weights_of(monitor, trainer, module) or "raw"
    return {"metrics": metrics, "objective": objective, "objective_source": source, "checkpoints": files,
            "best_ckpt": reproduced["objective"] or "", "reproduced_by": reproduced, "evaluated_weights": weights,
            "resumed_from": resume, "run_dir": str(out), "interrupted": bool(trainer.interrupted),
            "world_size": int(trainer.world_size), "num_nodes": int(trainer.num_nodes),
            "is_global_zero": trainer.is_global_zero,
            "timings": {"fit_s": fit_s, "test_s": (total_s - fit_s) if tested else 0.0, "total_s": total_s}}


def _previous(out: Path) -> dict[str, Any]:
    """The run directory's earlier record (a resumed run's), or {}."""
    from lit_tricks.records import read_record

    try:
        return read_record(out / "metrics.json")
    except (OSError, ValueError):
        return {}


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


def _remove_rejected_run_dir(out: Path, before: set[Path]) -> None:
    """A run rejected before it trained leaves nothing: remove what it wrote into ``out`` (everything not in
    ``before``, e.g. ``config_resolved.yaml`` and logger files of a monitor refused after the sanity pass), then
    ``out`` itself if only Hydra's files remain."""
    if not out.is_dir():
        return
    for path in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path in before or path.name.endswith(".log"):
            continue
        if not path.is_dir():
            path.unlink(missing_ok=True)
        elif not any(path.iterdir()):
            path.rmdir()
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
            _log_traceback(err)
        if rejected:
            _remove_rejected_run_dir(out, before)
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
