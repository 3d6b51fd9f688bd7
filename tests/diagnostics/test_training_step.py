"""lit_tricks.diagnostics.training_step: a module's own loss outside a Trainer, with the documented fallback."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lit_tricks.diagnostics.training_step import training_step_loss, training_step_loss_fn


class Doubled(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"loss": 2 * nn.functional.cross_entropy(self(batch[0]), batch[1])}


class NeedsTrainer(Doubled):
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        _ = self.trainer.global_step  # raises: not attached to a Trainer
        return super().training_step(batch, batch_idx)


def test_training_step_loss_is_the_steps_loss_and_falls_back_without_trainer() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    module = Doubled()
    ce = nn.functional.cross_entropy(module(x), y)
    loss, fell_back = training_step_loss(module, (x, y))
    assert not fell_back and torch.allclose(loss, 2 * ce)
    assert torch.allclose(training_step_loss_fn(module, (x, y)), 2 * ce)
    fallback = NeedsTrainer()
    fallback.load_state_dict(module.state_dict())
    loss, fell_back = training_step_loss(fallback, (x, y))
    assert fell_back and torch.allclose(loss, ce)
    with pytest.raises(TypeError, match="no training_step"):
        training_step_loss(nn.Linear(3, 2), (x, y))
