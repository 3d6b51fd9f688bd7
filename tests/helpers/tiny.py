"""Test fixtures: the demo model/data of :mod:`lit_tricks.demos` (one copy) and a quiet CPU Trainer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lit_tricks.demos import BlobsDataModule, TinyClassifier, make_blobs

__all__ = ["BlobsDataModule", "TinyClassifier", "make_blobs", "tiny_trainer"]


def tiny_trainer(tmp_path: Any, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``tmp_path``."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
