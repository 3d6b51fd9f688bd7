"""Ensembles from a sweep: the best checkpoints of the top-k jobs (different inits / hyperparameters), evaluated
together on the test split with :class:`~lit_tricks.callbacks.ensemble.CheckpointEnsemble`.

Members must share the architecture of the best job (a sweep over optimizer/regularization hyperparameters or seeds);
the best job's resolved config (``config_resolved.yaml``) rebuilds data, model and module.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_tricks.sweeps.report import JobResult, SweepReport, build_report

__all__ = ["ensemble_members", "evaluate_sweep_ensemble", "evaluate_sweep_soups", "job_config", "member_checkpoint"]


def _evaluated_with_ema(job: JobResult) -> bool:
    """Whether the job validated/tested the EMA of its weights (an EMAWeights callback with evaluate_with=ema)."""
    try:
        cfg = job_config(job)
    except FileNotFoundError:
        return False
    for node in (cfg.get("callbacks") or {}).values():
        if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("EMAWeights"):
            return str(node.get("evaluate_with", "ema")) == "ema"
    return False


def member_checkpoint(job: JobResult) -> str | None:
    """The file whose weights produced the job's objective: its EMA twin when the job evaluated the EMA.

    Records written by this lit_tricks name that file already (or none, when no file reproduces the objective);
    older ones named the raw training checkpoint, and its twin is used when the job's config evaluated the EMA.
    """
    from lit_tricks.fault.ema_checkpoint import ema_checkpoint_path
    from lit_tricks.fault.resume import is_training_checkpoint

    path = job.best_ckpt
    if not isinstance(path, str) or not path or not Path(path).is_file():
        return None
    twin = ema_checkpoint_path(path)
    if is_training_checkpoint(path) and twin.is_file() and _evaluated_with_ema(job):
        return str(twin)
    return path


def ensemble_members(report: SweepReport, top_k: int) -> list[JobResult]:
    """The ``top_k`` best ok jobs that left a checkpoint file (cross-validation jobs: skipped), each with
    ``best_ckpt`` set to the file that reproduces its objective (see :func:`member_checkpoint`)."""
    if top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    members = []
    for job in report.ok_jobs:
        path = member_checkpoint(job)
        if path is not None:
            members.append(replace(job, best_ckpt=path))
    return members[:top_k]


def job_config(job: JobResult) -> DictConfig:
    """A job's resolved config: ``config_resolved.yaml`` (written by lit_tricks.run), else ``.hydra/config.yaml``."""
    for path in (job.dir / "config_resolved.yaml", job.dir / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as err:  # a file cut short by a killed job
                raise ValueError(f"job {job.num}: {path} is not a readable config ({type(err).__name__})") from None
            if isinstance(cfg, DictConfig):
                return cfg
    raise FileNotFoundError(f"job {job.num}: no config_resolved.yaml or .hydra/config.yaml in {job.dir}")


def evaluate_sweep_ensemble(sweep_dir: str | Path, top_k: int = 3, combine: str = "mean_prob",
                            trainer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test the top-k checkpoints of a sweep as one ensemble; returns members and test metrics.

    The module is the best job's, loaded from its member file; the other members' weights come from theirs (each
    the file that reproduces the job's objective: the ``ema-`` twin of EMA-evaluated jobs). Result keys:
    ``members`` (job, objective, checkpoint, its own test/acc), ``test/acc`` (best single
    model), ``test/acc_ensemble``, ``test/loss_ensemble``.
    """
    import lightning.pytorch as pl
    import torch

    from lit_tricks.builders import build_datamodule, build_model, build_module
    from lit_tricks.callbacks.ensemble import CheckpointEnsemble

    report = build_report(sweep_dir, sigma_rel=False)
    members = ensemble_members(report, top_k)
    if not members:
        raise ValueError(f"sweep_dir={str(sweep_dir)!r}: no ok job with a best checkpoint file to ensemble")
    cfg = job_config(members[0])
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, dm), dm)
    paths = [str(m.best_ckpt) for m in members]
    ensemble = CheckpointEnsemble(checkpoint_paths=paths, combine=combine, log_prefix="test")
    kwargs: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                              "enable_model_summary": False, "enable_checkpointing": False,
                              "default_root_dir": str(Path(sweep_dir) / "ensemble")}
    kwargs.update(trainer_kwargs or {})
    trainer = pl.Trainer(callbacks=[ensemble], **kwargs)
    # the weights only (the callbacks that wrote the checkpoint are not part of this evaluation)
    state = torch.load(paths[0], map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state))
    trainer.test(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return {
        "sweep_dir": str(sweep_dir), "combine": combine,
        "members": [{"job": m.num, "objective": m.objective, "checkpoint": str(m.best_ckpt),
                     "test/acc": m.metrics.get("test/acc", math.nan)} for m in members],
        **metrics,
    }


def evaluate_sweep_soups(sweep_dir: str | Path, top_k: int = 5, select: str = "val/acc", combine: str = "mean_prob",
                         bn_batches: int | None = None) -> dict[str, Any]:
    """Best member, uniform soup, greedy soup and prediction ensemble of the top-k jobs
    (:func:`lit_tricks.posthoc.soup.soup_report`); souping needs members that share an initialization (one
    ``seed``, ``model`` and ``module.init``), refused in one line otherwise. Writes ``<sweep_dir>/soup.md``, ``.json``.
    """
    from lit_tricks.posthoc.evaluate import load_state, rebuild_run
    from lit_tricks.posthoc.soup import soup_report

    members = ensemble_members(build_report(sweep_dir, sigma_rel=False), top_k)
    if not members:
        raise ValueError(f"sweep_dir={str(sweep_dir)!r}: no ok job with a best checkpoint file to soup")
    keys = [tuple(OmegaConf.select(job_config(m), k) for k in ("seed", "model", "module.init")) for m in members]
    other = next((i for i, k in enumerate(keys) if k != keys[0]), None)
    if other is not None:
        raise ValueError(f"sweep_dir={str(sweep_dir)!r}: soups need members that share an initialization; job "
                         f"{members[other].num} has (seed, model, init) {keys[other]}, job {members[0].num} {keys[0]}")
    _, dm, module = rebuild_run(members[0].dir)
    result = soup_report([(f"job {m.num}", load_state(str(m.best_ckpt))) for m in members], module, dm,
                         select=select, bn_batches=bn_batches, combine_method=combine, out_dir=Path(sweep_dir))
    return {"sweep_dir": str(sweep_dir), **result}
