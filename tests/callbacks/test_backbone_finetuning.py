"""BackboneFinetuning on TrickModule: frozen for N epochs (bit-equal), then trained at ``ratio x`` the head's lr under
the module's decay rule, and following the Schedule; oracle: the SGD update written out by hand, and Lightning's own
callback (same freezing; its added group keeps a constant lr under a per-step scheduler)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BackboneFinetuning as LightningBackboneFinetuning
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_tricks.callbacks.backbone_finetuning import BackboneFinetuning
from lit_tricks.modules import TrickModule
from lit_tricks.schedules import Schedule
from tests.helpers.tiny import BlobsDataModule, tiny_trainer

UNFREEZE, RATIO, WD, LR = 2, 0.1, 0.1, 0.1
STEPS_PER_EPOCH = 4  # 128 samples / 32
BACKBONE = ("0.weight", "0.bias", "1.weight", "1.bias")  # names in TrickModule.model


def _module(scheduler: bool = True) -> TrickModule:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    return TrickModule(net, weight_decay=WD, optimizer=functools.partial(torch.optim.SGD, lr=LR, momentum=0.9),
                       scheduler=functools.partial(Schedule, body="cosine", warmup_steps=2) if scheduler else None)


class _Record(pl.Callback):
    """Per step: parameters before, gradients and group lrs at the step; parameters after every batch."""

    def __init__(self) -> None:
        self.before: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.lrs: list[list[float]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.before.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                           if p.grad is not None})
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.after.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def _fit(tmp_path: Path, callback: pl.Callback, module: TrickModule, epochs: int = 4) -> tuple[_Record, pl.Trainer]:
    record = _Record()
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, callbacks=[callback, record], enable_checkpointing=False,
                           limit_val_batches=0)
    trainer.fit(module, datamodule=BlobsDataModule(n=128, shuffle=False))
    return record, trainer


@pytest.mark.timeout(90)
def test_frozen_for_n_epochs_then_ratio_lr_decay_rule_and_schedule(tmp_path: Path) -> None:
    module = _module()
    record, trainer = _fit(tmp_path, BackboneFinetuning(UNFREEZE, backbone_initial_ratio_lr=RATIO), module)
    first = UNFREEZE * STEPS_PER_EPOCH  # first step with the backbone in the optimizer
    start = record.before[0]
    for step in range(first):  # frozen: bit-equal, no gradient
        assert all(torch.equal(record.after[step][n], start[n]) for n in BACKBONE)
        assert not set(BACKBONE) & set(record.grads[step])
    assert all(not torch.equal(record.after[-1][n], start[n]) for n in BACKBONE)

    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 4  # head: decayed, not decayed; backbone: decayed, not decayed
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed, undecayed = ([names[id(p)] for p in g["params"]] for g in groups[2:])
    assert decayed == ["0.weight"] and undecayed == ["0.bias", "1.weight", "1.bias"]
    assert [g["lit_tricks_decay"] for g in groups[2:]] == [WD, 0.0]
    assert [g["weight_decay"] for g in groups[2:]] == [0.0, 0.0]  # SGD + decoupled: the module's hook decays

    head_lrs = [lrs[0] for lrs in record.lrs]
    assert len(set(head_lrs[first:])) == len(head_lrs[first:])  # the schedule moves the head's lr every step
    for lrs in record.lrs[first:]:  # ... and the backbone's, at RATIO x
        assert lrs[2] == pytest.approx(RATIO * lrs[0], rel=1e-12) and lrs[3] == pytest.approx(RATIO * lrs[0], rel=1e-12)

    # the first backbone step by hand: SGD with a fresh momentum buffer, decoupled decay w <- w (1 - lr wd) first
    lr, grads, before, after = record.lrs[first][2], record.grads[first], record.before[first], record.after[first]
    for name in BACKBONE:
        shrink = 1.0 - lr * WD if name == "0.weight" else 1.0
        torch.testing.assert_close(after[name], before[name] * shrink - lr * grads[name], rtol=1e-6, atol=1e-7)

    # Lightning's callback freezes the same way; its one added group has no entry in the scheduler's per-group
    # lists, and torch's scheduler step (zip(..., strict=True)) fails at the first step after unfreezing
    reference = LightningBackboneFinetuning(UNFREEZE, backbone_initial_ratio_lr=RATIO, lambda_func=lambda e: 1.0)
    ref_record = _Record()
    ref_trainer = tiny_trainer(tmp_path / "lightning", max_epochs=4, callbacks=[reference, ref_record],
                               enable_checkpointing=False, limit_val_batches=0)
    with pytest.raises(ValueError, match="zip"):
        ref_trainer.fit(_module(), datamodule=BlobsDataModule(n=128, shuffle=False))
    assert len(ref_trainer.optimizers[0].param_groups) == 3
    for step in range(first):
        assert all(torch.equal(ref_record.after[step][n], record.after[step][n]) for n in record.after[step])


class _StopAfterEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.timeout(90)
def test_resume_after_unfreezing_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    whole, _ = _fit(tmp_path / "whole", BackboneFinetuning(UNFREEZE, backbone_initial_ratio_lr=RATIO), _module())
    callback = BackboneFinetuning(UNFREEZE, backbone_initial_ratio_lr=RATIO)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    stop = _StopAfterEpoch(UNFREEZE)  # max_epochs stays 4: the Schedule's length is the same
    tiny_trainer(tmp_path, max_epochs=4, callbacks=[callback, ckpt, stop], limit_val_batches=0).fit(
        _module(), datamodule=BlobsDataModule(n=128, shuffle=False))
    assert callback.lr_ratio == RATIO and callback.num_backbone_groups == 2
    resumed = BackboneFinetuning(UNFREEZE, backbone_initial_ratio_lr=RATIO)
    record = _Record()
    module = _module()
    tiny_trainer(tmp_path, max_epochs=4, callbacks=[resumed, record], limit_val_batches=0).fit(
        module, datamodule=BlobsDataModule(n=128, shuffle=False), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert record.lrs == whole.lrs[-STEPS_PER_EPOCH:]
    for name, value in record.after[-1].items():
        assert torch.equal(value, whole.after[-1][name]), name


def test_backbone_is_everything_but_the_head() -> None:
    import torchvision

    class WithToken(nn.Module):  # a parent that owns a parameter itself (as a ViT's class token)
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            self.fc = nn.Linear(4, 2)

    for net, head in ((torchvision.models.resnet18(num_classes=5), "fc"),
                      (torchvision.models.mobilenet_v3_small(num_classes=5), "classifier.3"),
                      (WithToken(), "fc")):
        module = TrickModule(net)
        got = {id(p) for p in module.backbone.parameters()}
        want = {id(p) for n, p in net.named_parameters() if not n.startswith(head + ".")}
        assert got == want and len(want) == sum(1 for _ in net.parameters()) - 2


def test_a_module_without_backbone_fails_with_one_line(tmp_path: Path) -> None:
    module = TrickModule(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()))
    with pytest.raises(ValueError, match=r"no nn\.Module `backbone`"):
        tiny_trainer(tmp_path, callbacks=[BackboneFinetuning(1)]).fit(module, datamodule=BlobsDataModule())


@pytest.mark.parametrize(("optimizer", "decay_in_group"), [(torch.optim.AdamW, True), (torch.optim.SGD, False)])
def test_finetune_param_groups_follow_the_decay_mode(optimizer: Any, decay_in_group: bool) -> None:
    """AdamW decays natively (the group's weight_decay); SGD + decoupled leaves it 0 and the module's hook decays."""
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    module = TrickModule(net, weight_decay=0.05, optimizer=functools.partial(optimizer, lr=0.1))
    module.configure_optimizers()
    groups = module.finetune_param_groups(list(net[:2].parameters()))
    assert [len(g["params"]) for g in groups] == [1, 3] and groups[0]["params"][0] is net[0].weight
    assert [g["weight_decay"] for g in groups] == [0.05 if decay_in_group else 0.0, 0.0]
    assert [g["lit_tricks_decay"] for g in groups] == [0.05, 0.0]
