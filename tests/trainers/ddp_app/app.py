"""A tiny ``@hydra.main`` app that trains under a lit_tricks trainer config the way ``lit_tricks.run`` does.

Every rank writes ``<probe_dir>/<pid>.json`` with its rank, config hash, run dir and environment; rank 0 writes
``metrics.json`` into the run dir. Used by tests/trainers/test_ddp_hydra.py in subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.hydra_job import config_hash, job_guard
from tests.helpers.tiny import BlobsDataModule, TinyClassifier

ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Probe(pl.Callback):
    """Writes this rank's view of the job at the start of fitting; raises on rank 0 when asked."""

    def __init__(self, cfg: DictConfig, fail: bool) -> None:
        self.cfg, self.fail = cfg, fail
        self.env_at_job_start = {k: os.environ.get(k) for k in ENV_KEYS}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hc = HydraConfig.get()
        record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size, "hash": config_hash(self.cfg),
            "run_dir": hc.runtime.output_dir, "job_num": OmegaConf.select(hc, "job.num", default=None),  # type: ignore[arg-type]
            "mode": str(hc.mode), "lr": float(self.cfg.lr), "env_at_job_start": self.env_at_job_start,
            "optimizer_lr": trainer.optimizers[0].param_groups[0]["lr"],
            "sync_bn": any(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules()),
            "timeout_s": trainer.strategy._timeout.total_seconds() if hasattr(trainer.strategy, "_timeout") else None,
        }
        path = Path(self.cfg.probe_dir) / f"job{record['job_num']}_rank{record['rank']}_{os.getpid()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.fail and trainer.global_rank == 0 and batch_idx == 1:
            raise RuntimeError("injected failure on rank 0")


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    fail = multirun and int(OmegaConf.select(hc, "job.num", default=-1)) in list(cfg.fail_jobs)
    torch.set_num_threads(1)
    out = Path(hc.runtime.output_dir)
    try:
        with job_guard(cfg):
            pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
            model = TinyClassifier(lr=float(cfg.lr))
            trainer = build_trainer(cfg, callbacks=[Probe(cfg, fail)], logger=False)
            trainer.fit(model, datamodule=BlobsDataModule(n=128, batch_size=16))
            objective = float(trainer.callback_metrics["val/acc"])
            if trainer.is_global_zero:
                (out / "metrics.json").write_text(json.dumps({"status": "ok", "objective": objective}))
            return objective
    except Exception as err:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            (out / "metrics.json").write_text(json.dumps({"status": "failed", "error": str(err)}))
        if not multirun:
            raise
        return math.nan


if __name__ == "__main__":
    main()
