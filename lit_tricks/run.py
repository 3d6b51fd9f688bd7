"""One training job from a composed Hydra config: data, model, module, callbacks, trainer; fit, test, report.

``scripts/train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_tricks.builders import build_callbacks, build_datamodule, build_loggers, build_model, build_module
from lit_tricks.config_checks import check_config
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.jobs import job_guard, sweep_failure_value

# The build_* helpers live in lit_tricks.builders; they stay importable from here for compatibility.
__all__ = ["build_callbacks", "build_datamodule", "build_loggers", "build_model", "build_module", "run_dir", "train"]

log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    """This job's output directory (Hydra's run dir when running under Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(json.dumps(payload, indent=2, sort_keys=True, default=str).encode(), path)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return []


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, ImportError):
        return False


def _fit_once(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one model; returns the metrics dict written to ``metrics.json``."""
    out = run_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    module = build_module(cfg, model, dm)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger; with logger=none there is nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = build_trainer(cfg, callbacks, loggers or False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(OmegaConf.to_yaml(resolved).encode(), out / "config_resolved.yaml")
    for lg in trainer.loggers:
        lg.log_hyperparams(_flatten(resolved))  # type: ignore[arg-type]
    trainer.fit(module, datamodule=dm, ckpt_path=_resume_path(cfg, out))
    metrics = _scalar_metrics(trainer)
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    if cfg.get("test", True) and not trainer.interrupted:
        trainer.test(module, datamodule=dm, ckpt_path="best" if best else None, verbose=False)
        metrics.update({k: v for k, v in _scalar_metrics(trainer).items() if k.startswith("test/")})
    return {"metrics": metrics, "best_ckpt": best, "run_dir": str(out),
            "interrupted": bool(trainer.interrupted), "is_global_zero": trainer.is_global_zero}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            flat.update(_flatten(v, f"{prefix}{k}/"))
    else:
        flat[prefix.rstrip("/")] = d if isinstance(d, int | float | str | bool) or d is None else str(d)
    return flat


def _objective(metrics: dict[str, float], monitor: str) -> float:
    if monitor not in metrics:
        raise KeyError(f"monitor={monitor!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[monitor]


def _cross_validate(cfg: DictConfig, fit: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Run every fold of ``data.num_folds`` inside this job; the objective is the mean over folds."""
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
    return {**last, "metrics": metrics, "folds": [r["metrics"] for r in per_fold],
            "best_ckpt": [r["best_ckpt"] for r in per_fold]}


def train(cfg: DictConfig) -> float:
    """Validate, fit, test; write ``metrics.json`` into the run directory; return the monitored metric.

    In a multirun (sweep), a job that raises is recorded as failed (status and error line in ``metrics.json``) and
    returns nan (Hydra's basic sweeper) or re-raises (Optuna records a failed trial), so the sweep goes on; a single
    run re-raises.
    """
    check_config(cfg)
    out = run_dir(cfg)
    monitor = str(cfg.get("monitor", "val/loss"))  # the default of conf/train.yaml
    record: dict[str, Any] = {"monitor": monitor, "overrides": _overrides(), "status": "ok", "error": None}
    try:
        with job_guard(cfg):
            result = _cross_validate(cfg, _fit_once) if cfg.get("cv", False) else _fit_once(cfg)
            record.update(result)
            record["objective"] = _objective(result["metrics"], monitor)
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}".splitlines()[0], objective=math.nan)
        if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0:
            _write_json(out / "metrics.json", record)
        if not _is_multirun():
            raise
        log.error("job failed, the sweep goes on: %s", record["error"])
        return sweep_failure_value(err)
    if record.get("is_global_zero", True):
        _write_json(out / "metrics.json", record)
        _print_summary(record)
    return float(record["objective"])


def _print_summary(record: dict[str, Any]) -> None:
    m = record["metrics"]
    parts = [f"{k}={m[k]:.4f}" for k in ("val/acc", "val/acc_ema", "test/acc", "test/acc_ema") if k in m]
    print("lit_tricks: " + ("  ".join(parts) or "no accuracy logged"))
    print(f"lit_tricks: objective {record['monitor']}={record['objective']:.4f}")
    print(f"lit_tricks: checkpoint {record.get('best_ckpt') or '(none)'}")
    print(f"lit_tricks: run directory {record.get('run_dir')}")
