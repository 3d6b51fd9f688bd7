"""A fast ``@hydra.main`` stand-in for scripts/train.py under ``hydra/sweeper=lit_optuna``.

Per epoch e (of trainer.max_epochs) the value is ``objective(lr, wd) * (e + 1) / max_epochs``, reported to the
trial; the job writes metrics.json as ``lit_tricks.run`` does (status ok / failed / pruned) and returns the value.
Every epoch run appends ``<trial> <lr> <epoch>`` to ``<log dir>/epochs.log``. A preempted job saves
``checkpoints/last-preempted.ckpt`` (a training checkpoint: its epoch) and exits 0 as the Preemption callback does;
a job given ``resume=<that file>`` goes on after the saved epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lit_tricks.optuna_job import current_trial


def objective(lr: float, wd: float) -> float:
    return 1.0 - ((math.log10(lr) + 1.5) ** 2 + (math.log10(wd) + 4.0) ** 2) / 50.0


def _barrier(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 60.0
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    trial = current_trial()
    number = None if trial is None else trial.number
    if cfg.barrier_dir:
        _barrier(Path(cfg.barrier_dir), int(cfg.barrier_count))
    if cfg.kill_at_trial is not None and number == int(cfg.kill_at_trial):
        os.kill(os.getpid(), signal.SIGKILL)
    lr, wd = float(cfg.optimizer.lr), float(cfg.module.weight_decay)
    record = {"monitor": cfg.monitor, "overrides": list(HydraConfig.get().overrides.task), "best_ckpt": "",
              "status": "ok", "error": None, "pid": os.getpid(), "trial": number}
    if cfg.fail_at_trial is not None and number == int(cfg.fail_at_trial):
        record.update(status="failed", error="RuntimeError: loss diverged", objective=math.nan)
        (out / "metrics.json").write_text(json.dumps(record))
        raise RuntimeError("loss diverged")
    if cfg.interrupt_at_trial is not None and number == int(cfg.interrupt_at_trial):
        raise KeyboardInterrupt
    epochs = int(cfg.trainer.max_epochs)
    value = objective(lr, wd)
    first = 0
    if cfg.resume:
        import torch

        first = int(torch.load(str(cfg.resume), weights_only=True)["epoch"]) + 1
        record["resumed_from"] = str(cfg.resume)
    for epoch in range(first, epochs):
        with open(Path(cfg.paths.log_dir) / "epochs.log", "a") as fh:
            fh.write(f"{number} {lr!r} {epoch}\n")
        if cfg.preempt_at_trial is not None and number == int(cfg.preempt_at_trial) and epoch == 1:
            import torch
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            (out / "checkpoints").mkdir(exist_ok=True)
            state = {"epoch": epoch, "loops": {}, "optimizer_states": []}
            torch.save(state, out / "checkpoints" / "last-preempted.ckpt")
            raise SIGTERMException(0)
        value = objective(lr, wd) * (epoch + 1) / epochs
        if trial is not None:
            trial.report(value, epoch)
            if trial.should_prune():
                import optuna

                record.update(status="pruned", error=f"TrialPruned: pruned at epoch {epoch}", objective=math.nan)
                (out / "metrics.json").write_text(json.dumps(record))
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    record.update(objective=value, metrics={cfg.monitor: value, "epochs": epochs})
    (out / "metrics.json").write_text(json.dumps(record))
    return value


if __name__ == "__main__":
    main()
