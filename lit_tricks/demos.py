"""A tiny classifier and a deterministic blobs DataModule: run any lit_tricks callback in seconds on CPU.

Like ``lightning.pytorch.demos``: stand-ins for your own LightningModule and data in examples and tests::

    import lightning.pytorch as pl
    from lit_tricks.callbacks import EMAWeights
    from lit_tricks.demos import BlobsDataModule, TinyClassifier

    pl.Trainer(max_epochs=2, callbacks=[EMAWeights(decay=0.9)]).fit(TinyClassifier(), datamodule=BlobsDataModule())
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["BlobsDataModule", "TinyClassifier", "make_blobs"]


def make_blobs(n: int = 256, dim: int = 8, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    """Gaussian blobs: linearly separable enough to learn in a few steps. Every seed draws from the same centers,
    so train (seed 0) and validation (seed 1) come from one distribution."""
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


class BlobsDataModule(pl.LightningDataModule):
    """Deterministic train/val/test loaders over blobs (shuffle uses a seeded generator)."""

    def __init__(self, n: int = 256, dim: int = 8, num_classes: int = 3, batch_size: int = 32,
                 shuffle: bool = True) -> None:
        super().__init__()
        self.n, self.dim, self.num_classes, self.batch_size, self.shuffle = n, dim, num_classes, batch_size, shuffle

    def setup(self, stage: str | None = None) -> None:
        self.train_set = make_blobs(self.n, self.dim, self.num_classes, seed=0)
        self.val_set = make_blobs(self.n // 2, self.dim, self.num_classes, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyClassifier(pl.LightningModule):
    """A plain LightningModule (not TrickModule): MLP with BatchNorm and dropout, logs val/loss and val/acc."""

    def __init__(self, dim: int = 8, num_classes: int = 3, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def _eval(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, y))
        self.log(f"{stage}/acc", (logits.argmax(-1) == y).float().mean())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
