"""The Trainer of one run, built from ``cfg.trainer``: every run builds its Trainer here, not only sweeps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_tricks.hydra_utils import hydra_config
from lit_tricks.trainers.strategies import ddp_strategy
from lit_tricks.validation import ArgumentError, number_problem, raise_all

__all__ = ["DDP_NAMES", "build_trainer", "check_trainer_args"]

#: Strategy names that build_trainer upgrades to the Hydra-safe DDP strategy (popen launcher) under Hydra.
DDP_NAMES = {"ddp": False, "ddp_find_unused_parameters_true": True, "ddp_find_unused_parameters_false": False}


def check_trainer_args(kwargs: Mapping[str, Any]) -> None:
    """The Trainer keyword arguments refused before Lightning sees them (``ArgumentError`` / ``ArgumentErrors``):
    ``max_epochs`` below -1, and ``sync_batchnorm`` on CPUs (torch's SyncBatchNorm is a CUDA-only layer)."""
    errors = []
    epochs = kwargs.get("max_epochs")
    if epochs is not None and (problem := number_problem(epochs, -1, integer=True)):
        errors.append(ArgumentError("max_epochs", epochs, problem))
    if kwargs.get("sync_batchnorm") and kwargs.get("accelerator") == "cpu":
        problem = ("needs GPUs (torch's SyncBatchNorm only runs on CUDA modules); with accelerator=cpu set it false, "
                   "or use trainer=ddp")
        errors.append(ArgumentError("sync_batchnorm", kwargs["sync_batchnorm"], problem))
    raise_all(errors)


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    """Instantiate ``cfg.trainer`` (Trainer keyword arguments; ``strategy`` may be a ``_target_`` node).

    Under Hydra a plain ``strategy=ddp`` string becomes :class:`HydraSafeDDPStrategy` (torch's default timeout),
    so ``python scripts/train.py -m ... trainer.strategy=ddp`` is safe too.
    """
    container = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"trainer must be a mapping of Trainer keyword arguments, got {type(container).__name__}")
    container.pop("_target_", None)
    check_trainer_args(container)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = instantiate(container, _convert_="all")
    strategy = kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in DDP_NAMES and hydra_config() is not None:
        kwargs["strategy"] = ddp_strategy(find_unused_parameters=DDP_NAMES[strategy])
    return pl.Trainer(**kwargs, callbacks=callbacks, logger=logger)
