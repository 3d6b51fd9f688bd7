"""Hydra + DDP safety: one Hydra job = one clean DDP run, and the Trainer built from ``cfg.trainer``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["build_trainer", "job_guard"]


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def job_guard(cfg: DictConfig) -> Iterator[None]:
    """Run one Hydra job: restore ``os.environ`` and tear the process group down afterwards, also on error."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        _destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    """Instantiate ``cfg.trainer`` (Trainer keyword arguments) with ``callbacks`` and ``logger``."""
    node = cfg.trainer
    if "_target_" in node:
        return instantiate(node, callbacks=callbacks, logger=logger, _convert_="all")
    return pl.Trainer(**instantiate(node, _convert_="all"), callbacks=callbacks, logger=logger)
