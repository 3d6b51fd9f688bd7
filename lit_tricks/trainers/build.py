"""The Trainer of one run, built from ``cfg.trainer``: every run builds its Trainer here, not only sweeps."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_tricks.hydra_utils import hydra_config
from lit_tricks.trainers.strategies import ddp_strategy

__all__ = ["DDP_NAMES", "build_trainer"]

#: Strategy names that build_trainer upgrades to the Hydra-safe DDP strategy (popen launcher) under Hydra.
DDP_NAMES = {"ddp": False, "ddp_find_unused_parameters_true": True, "ddp_find_unused_parameters_false": False}


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    """Instantiate ``cfg.trainer`` (Trainer keyword arguments; ``strategy`` may be a ``_target_`` node).

    Under Hydra a plain ``strategy=ddp`` string becomes :class:`HydraSafeDDPStrategy` (torch's default timeout),
    so ``python scripts/train.py -m ... trainer.strategy=ddp`` is safe too.
    """
    container = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"trainer must be a mapping of Trainer keyword arguments, got {type(container).__name__}")
    container.pop("_target_", None)
    if container.get("sync_batchnorm") and container.get("accelerator") == "cpu":
        raise ValueError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm only runs on CUDA modules);"
                         " got trainer.accelerator=cpu: set trainer.sync_batchnorm=false or use trainer=ddp")
    kwargs: dict[str, Any] = instantiate(container, _convert_="all")
    strategy = kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in DDP_NAMES and hydra_config() is not None:
        kwargs["strategy"] = ddp_strategy(find_unused_parameters=DDP_NAMES[strategy])
    return pl.Trainer(**kwargs, callbacks=callbacks, logger=logger)
