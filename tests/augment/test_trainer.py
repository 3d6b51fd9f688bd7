"""Every augmentation preset in a real Trainer on the digits DataModule: train-only, reaches the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_tricks.data.digits import DigitsDataModule
from tests.augment.presets import PRESETS, load_preset
from tests.helpers.tiny import tiny_trainer


class DigitsNet(pl.LightningModule):
    """Linear classifier on raw 1x8x8 images; applies ``batch_augment`` in training_step only (soft-target CE)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.batch_augment: Any = None
        self.seen_soft = False
        self.first_val_x: Tensor | None = None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        if self.batch_augment is not None:
            x, y = self.batch_augment(x, y)
            self.seen_soft = self.seen_soft or y.ndim == 2
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.first_val_x is None:
            self.first_val_x = batch[0].clone()
        self.log("val/loss", F.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _dm(transform: Any) -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=16, train_transform=transform, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_and_stays_out_of_eval(tmp_path: Path, name: str) -> None:
    pipe, batch_augment = load_preset(name)
    plain, augmented = _dm(None), _dm(pipe)
    x_raw, y_raw = next(iter(plain.train_dataloader()))
    x_aug, y_aug = next(iter(augmented.train_dataloader()))
    assert torch.equal(y_raw, y_aug) and x_aug.shape == x_raw.shape and x_aug.dtype == x_raw.dtype
    assert torch.equal(x_aug, x_raw) == (name == "none")  # augmentation reaches the training batches
    val_raw, val_aug = next(iter(plain.val_dataloader())), next(iter(augmented.val_dataloader()))
    assert torch.equal(val_raw[0], val_aug[0])  # absent from eval

    pl.seed_everything(0)
    model = DigitsNet()
    model.batch_augment = batch_augment
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                           enable_checkpointing=False)
    trainer.fit(model, augmented)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert model.first_val_x is not None and torch.equal(model.first_val_x, val_raw[0])
    assert model.seen_soft == (name in ("mixup", "cutmix"))
