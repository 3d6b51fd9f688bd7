"""GradientClipping with two optimizers (manual optimization, as Lightning 2 requires): each optimizer's step clips
its own parameters with their own norm; ``auto`` keeps one history per optimizer. Oracle: torch's clip_grad_norm_ on
each optimizer's parameter set, and numpy-style percentiles of each optimizer's own pre-clip norms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lit_tricks.callbacks.clipping import GradientClipping
from tests.helpers.tiny import BlobsDataModule, tiny_trainer


class TwoOptimizers(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt, net, scale in zip(self.optimizers(), (self.a, self.b), (1.0, 50.0)):  # b's grads are 50x larger
            opt.zero_grad()
            self.manual_backward(scale * nn.functional.cross_entropy(net(x), y))
            opt.step()

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.a.parameters(), lr=0.01), torch.optim.SGD(self.b.parameters(), lr=0.001)]


class Grads(pl.Callback):
    """Gradients of the stepping optimizer's parameters, per optimizer index."""

    def __init__(self) -> None:
        self.seen: dict[int, list[list[torch.Tensor]]] = {0: [], 1: []}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        idx = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer)
        self.seen[idx].append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])


def _fit(tmp_path: Path, clip: GradientClipping) -> tuple[Grads, Grads]:
    before, after = Grads(), Grads()
    tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=0, enable_checkpointing=False,
                 callbacks=[before, clip, after]).fit(TwoOptimizers(), BlobsDataModule())
    return before, after


def test_norm_clipping_with_two_optimizers_clips_each_optimizers_parameters_with_their_own_norm(
    tmp_path: Path
) -> None:
    before, after = _fit(tmp_path, GradientClipping("norm", max_norm=1.0, log=False))
    for idx in (0, 1):
        assert len(before.seen[idx]) == 5
        for pre, post in zip(before.seen[idx], after.seen[idx]):
            params = [nn.Parameter(torch.zeros_like(g)) for g in pre]
            for p, g in zip(params, pre):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for p, g in zip(params, post):
                torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-7)


def test_auto_mode_keeps_one_norm_history_per_optimizer(tmp_path: Path) -> None:
    clip = GradientClipping("auto", percentile=50.0, history=8, log=False)
    before, after = _fit(tmp_path, clip)
    state = clip.state_dict()
    assert sorted(state["per_optimizer"]) == [0, 1]
    for idx in (0, 1):
        norms = [torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                 for grads in before.seen[idx]]
        history = state["per_optimizer"][idx]["norm_history"]
        assert state["per_optimizer"][idx]["steps"] == 5
        torch.testing.assert_close(history[:5], torch.stack(norms), rtol=1e-6, atol=1e-7)
        for t, (pre, post) in enumerate(zip(before.seen[idx], after.seen[idx])):
            threshold = float(torch.quantile(torch.stack(norms[: t + 1]).double(), 0.5))  # this optimizer's only
            factor = min(1.0, threshold / (float(norms[t]) + 1e-6))
            for g0, g1 in zip(pre, post):
                torch.testing.assert_close(g1, g0 * factor, rtol=1e-5, atol=1e-7)
    restored = GradientClipping("auto", percentile=50.0, history=8, log=False)
    restored.load_state_dict(state)
    again = restored.state_dict()
    for idx in (0, 1):
        assert torch.equal(again["per_optimizer"][idx]["norm_history"], state["per_optimizer"][idx]["norm_history"])
        assert again["per_optimizer"][idx]["steps"] == 5


def test_version_1_state_loads_as_optimizer_0() -> None:
    clip = GradientClipping("auto", history=4)
    clip.load_state_dict({"version": 1, "norm_history": torch.tensor([1.0, 2.0, 0, 0]), "steps": 2,
                          "clipped_steps": torch.tensor(1.0)})
    assert clip.steps == 2 and torch.equal(clip.norm_history, torch.tensor([1.0, 2.0, 0, 0]))
    assert list(clip.state_dict()["per_optimizer"]) == [0]
