"""NaNGuard drops a bad step completely: no parameter, momentum buffer or Adam counter changes, whatever else runs
in that step (TrickModule's decoupled weight decay); oracle: an unguarded run that never saw the bad batch."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.callbacks import NaNGuard
from lit_tricks.modules import TrickModule
from tests.helpers.tiny import make_blobs, tiny_trainer

BAD = 3  # index of the batch whose inputs hold a NaN
OPTIMIZERS = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),  # decay by TrickModule's hook
    "adamw": functools.partial(torch.optim.AdamW, lr=0.01),  # AdamW's own decoupled decay
    "adam": functools.partial(torch.optim.Adam, lr=0.01),  # decay by the hook, step counters in the state
}


def _data(with_bad: bool) -> DataLoader:
    x, y = make_blobs(64, 8, 3).tensors
    xs, ys = list(x.split(8)), list(y.split(8))
    if with_bad:
        bad = xs[BAD].clone()
        bad[0, 0] = float("nan")
        xs.insert(BAD, bad)
        ys.insert(BAD, ys[BAD].clone())
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=8, shuffle=False)


def _module(opt: str) -> TrickModule:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return TrickModule(net, weight_decay=0.1, optimizer=OPTIMIZERS[opt])


class _Record(pl.Callback):
    """Parameters and optimizer state after every batch."""

    def __init__(self) -> None:
        self.after: list[tuple[list[torch.Tensor], dict[str, Any]]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        params = [p.detach().clone() for p in pl_module.parameters()]
        self.after.append((params, copy.deepcopy(trainer.optimizers[0].state_dict()["state"])))


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(torch.equal(torch.as_tensor(a[k][n]), torch.as_tensor(b[k][n]))
                                           for n in a[k])
        for k in a
    )


@pytest.mark.parametrize("policy", ["skip_step", "rollback"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_skipped_step_changes_no_parameter_and_no_optimizer_state_with_decoupled_weight_decay(
    tmp_path: Path, opt: str, policy: str
) -> None:
    record = _Record()
    guarded = _module(opt)
    callbacks = [NaNGuard(policy=policy, lr_factor=1.0, check_on_save=False), record]
    tiny_trainer(tmp_path, max_epochs=1, callbacks=callbacks, enable_checkpointing=False,
                 limit_val_batches=0).fit(guarded, _data(with_bad=True))
    before, after = record.after[BAD - 1], record.after[BAD]
    assert all(torch.equal(p, q) for p, q in zip(before[0], after[0]))
    assert _same_state(before[1], after[1])

    reference = _module(opt)  # never saw the bad batch
    tiny_trainer(tmp_path / "ref", max_epochs=1, enable_checkpointing=False,
                 limit_val_batches=0).fit(reference, _data(with_bad=False))
    for p, q in zip(guarded.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class _ManualDecay(pl.LightningModule):
    """Manual optimization with its own decoupled decay in on_before_optimizer_step (acts without gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.net = nn.Linear(8, 3)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        self.manual_backward(nn.functional.cross_entropy(self.net(x), y))
        opt.step()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(0.99)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_skipped_step_under_manual_optimization_changes_nothing(tmp_path: Path) -> None:
    record = _Record()
    tiny_trainer(tmp_path, max_epochs=1, callbacks=[NaNGuard(check_on_save=False), record],
                 enable_checkpointing=False, limit_val_batches=0).fit(_ManualDecay(), _data(with_bad=True))
    before, after = record.after[BAD - 1], record.after[BAD]
    assert all(torch.equal(p, q) for p, q in zip(before[0], after[0]))
    assert _same_state(before[1], after[1])
    assert not all(torch.equal(p, q) for p, q in zip(after[0], record.after[BAD + 1][0]))  # training goes on


def test_a_step_that_never_runs_leaves_no_pending_restore_behind() -> None:
    from lit_tricks.callbacks.nan_guard import _copy_step_state

    param = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    guard = NaNGuard()
    guard._undo_after_step(opt, _copy_step_state(opt))
    with torch.no_grad():
        param.mul_(0.5)  # what the skipped step's hooks did
    guard._flush_pending()  # batch end: the GradScaler skipped optimizer.step, the post-step hook never fired
    assert torch.equal(param.detach(), torch.ones(3)) and not guard._pending
    param.grad = torch.ones(3)
    opt.step()  # a later good step is not undone by a stale hook
    assert torch.allclose(param.detach(), torch.full((3,), 0.9))
