"""A fast ``@hydra.main`` stand-in for scripts/train.py: writes metrics.json the way ``lit_tricks.run`` does.

objective = 1 - ((log10 lr - lr_opt_log10)^2 + (log10 wd + 4)^2) / 50; lr above ``fail_above_lr`` fails the job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lit_tricks.trainers.hydra_job import sweep_failure_value


def objective(lr: float, wd: float, lr_opt_log10: float) -> float:
    return 1.0 - ((math.log10(lr) - lr_opt_log10) ** 2 + (math.log10(wd) + 4.0) ** 2) / 50.0


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    lr, wd = float(cfg.optimizer.lr), float(cfg.module.weight_decay)
    record = {"monitor": cfg.monitor, "overrides": list(HydraConfig.get().overrides.task), "best_ckpt": "",
              "status": "ok", "error": None}
    if lr > float(cfg.fail_above_lr):
        record.update(status="failed", error=f"RuntimeError: loss diverged (lr={lr:g})", objective=math.nan,
                      metrics={})
        value = math.nan
    else:
        value = objective(lr, wd, float(cfg.lr_opt_log10))
        record.update(objective=value, metrics={cfg.monitor: value, "epochs": int(cfg.trainer.max_epochs)})
    (out / "metrics.json").write_text(json.dumps(record))
    if record["status"] == "failed":  # as lit_tricks.run.train does in a multirun
        return sweep_failure_value(RuntimeError(record["error"]))
    return value


if __name__ == "__main__":
    main()
