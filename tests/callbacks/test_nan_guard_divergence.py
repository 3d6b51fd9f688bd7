"""NaNGuard's divergence check on scripted losses: the loss of step ``s`` is ``LOSSES[s]`` exactly (plus a zero
term that gives the weight a unit gradient), so the trigger step is computed by hand from the rule: reference =
mean of the first ``divergence_ref_steps`` step losses, bad when the last ``divergence_window`` losses are all above
``divergence_factor * reference``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.callbacks import NaNGuard
from tests.helpers.tiny import tiny_trainer

# reference = mean(1, 2, 3) = 2, threshold 3 x 2 = 6; window 2. Step 4 is a single spike (20): counter 1, then
# step 5 (2) resets it. Steps 6, 7 are above: the counter reaches 2 at step 7 -> step 7 is the first bad step.
LOSSES = [1.0, 2.0, 3.0, 5.0, 20.0, 2.0, 7.0, 8.0, 9.0, 1.0, 1.0, 1.0]
TRIGGER = 7


class Scripted(pl.LightningModule):
    """Micro-batch ``i`` has the loss ``script[i]``; the weight ``w`` gets gradient 1 per step (SGD lr 1)."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script = script
        self.w = nn.Parameter(torch.zeros(()))
        self.micro = 0
        self.ws: list[float] = []  # w after every batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        k = self.trainer.accumulate_grad_batches  # the micro-batch index follows the step, whatever the data order
        index = self.trainer.global_step * k + batch_idx % k
        return torch.tensor(self.script[index]) + (self.w - self.w.detach())  # step gradient 1 (summed / k)

    def on_train_batch_end(self, *args: Any) -> None:
        self.ws.append(float(self.w.detach()))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _loader(n: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=1)


def _guard(policy: str, **kwargs: Any) -> NaNGuard:
    defaults: dict[str, Any] = dict(divergence_factor=3.0, divergence_ref_steps=3, divergence_window=2,
                                    check_on_save=False, lr_factor=0.5)
    defaults.update(kwargs)
    return NaNGuard(policy=policy, **defaults)


def _fit(tmp_path: Path, guard: NaNGuard, script: list[float], steps: int, **kwargs: Any) -> Scripted:
    model = Scripted(script)
    tiny_trainer(tmp_path, max_steps=steps, max_epochs=1, callbacks=[guard], enable_checkpointing=False,
                 limit_val_batches=0, **kwargs).fit(model, _loader(len(script)))
    return model


@pytest.mark.timeout(60)
def test_trigger_step_by_hand_and_a_single_spike_does_not_trigger(tmp_path: Path) -> None:
    stop = _guard("stop")
    model = _fit(tmp_path / "stop", stop, LOSSES, len(LOSSES))
    assert stop.bad_steps == stop.diverged_steps == [TRIGGER]  # not step 4, the lone spike
    assert stop.reference == 2.0 and stop.stop_reason is not None
    assert len(model.ws) == TRIGGER + 1 and model.ws[-1] == model.ws[-2] == -TRIGGER  # step 7's update dropped

    skip = _guard("skip_step")
    model = _fit(tmp_path / "skip", skip, LOSSES, len(LOSSES))
    assert skip.bad_steps == [7, 8]  # still above at step 8; step 9 (1.0) is good again
    assert model.ws == [-1.0 * (s + 1 - sum(b <= s for b in (7, 8))) for s in range(len(LOSSES))]

    roll = _guard("rollback")
    model = _fit(tmp_path / "roll", roll, LOSSES, len(LOSSES))
    assert roll.bad_steps == [7] and roll.rollbacks == 1  # the counter restarts after the rollback: 8 alone is 1
    assert model.ws[TRIGGER] == -7.0 and model.ws[-1] == -7.0 - 0.5 * 4  # then lr x 0.5 for steps 8..11

    off = NaNGuard(check_on_save=False)  # divergence_factor=None: the same run has no bad step
    _fit(tmp_path / "off", off, LOSSES, len(LOSSES))
    assert off.bad_steps == [] and off.ref_count == 0

    ones = _guard("skip_step", divergence_window=1)  # no smoothing: the spike at step 4 triggers
    _fit(tmp_path / "w1", ones, LOSSES, len(LOSSES))
    assert ones.bad_steps == [4, 6, 7, 8]


@pytest.mark.timeout(90)
def test_reference_survives_a_checkpoint_resume(tmp_path: Path) -> None:
    whole = _guard("skip_step")
    _fit(tmp_path / "whole", whole, LOSSES, len(LOSSES))

    first = _guard("skip_step")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    model = Scripted(LOSSES)
    tiny_trainer(tmp_path, max_steps=5, max_epochs=1, callbacks=[first, ckpt], limit_val_batches=0).fit(
        model, _loader(len(LOSSES)))
    assert first.ref_count == 3 and first.above == 1  # the spike at step 4 is counted, not yet reset
    resumed = _guard("skip_step")  # a fresh guard would take steps 5..7 (2, 7, 8) as its reference: no trigger
    tiny_trainer(tmp_path, max_steps=len(LOSSES), max_epochs=1, callbacks=[resumed], limit_val_batches=0).fit(
        Scripted(LOSSES), _loader(len(LOSSES)), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.bad_steps == whole.bad_steps == [7, 8]
    assert resumed.state_dict() == whole.state_dict()
    loaded = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert loaded["ref_sum"] == 6.0 and loaded["ref_count"] == 3


@pytest.mark.timeout(60)
def test_with_gradient_accumulation_the_step_loss_is_the_mean_of_its_micro_batches(tmp_path: Path) -> None:
    # micro-batch pairs -> step losses 1, 2, 3 (reference 2, threshold 6), 5.5, 10.5, 7, 12. Looking only at the
    # last micro-batch would count steps 3 (9) and 4 (20) and trigger at step 4; the means trigger at step 5, and
    # step 6 is the second bad step in a row: max_consecutive=2 stops the run (batches without a step in between do
    # not reset the count).
    pairs = [(1, 1), (2, 2), (3, 3), (2, 9), (1, 20), (11, 3), (12, 12), (1, 1), (1, 1)]
    script = [float(v) for pair in pairs for v in pair]
    guard = _guard("skip_step", max_consecutive=2)
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[guard], enable_checkpointing=False,
                           limit_val_batches=0, accumulate_grad_batches=2)
    model = Scripted(script)
    trainer.fit(model, _loader(len(script)))
    assert guard.bad_steps == guard.diverged_steps == [5, 6] and guard.reference == 2.0
    assert trainer.global_step == 7 and guard.stop_reason is not None and "2 bad steps in a row" in guard.stop_reason
    assert model.ws[-1] == -5.0  # steps 0..4 applied (w -= 1 each), 5 and 6 dropped


def test_ddp_decision_uses_the_mean_loss_of_the_ranks() -> None:
    """The ranks' step losses are averaged in the same collective as the NaN flag (a fake 2-rank strategy)."""
    other = {"bad": 0.0, "loss": 0.0}

    def reduce(t: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        return t + torch.tensor([other["bad"], other["loss"], 1.0])

    trainer: Any = SimpleNamespace(world_size=2, global_step=0, should_stop=False,
                                   strategy=SimpleNamespace(reduce=reduce))
    guard = NaNGuard(policy="stop", divergence_factor=3.0, divergence_ref_steps=1, divergence_window=1)
    param = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=0.1)

    def step(mine: float, theirs: float) -> bool:
        other["loss"] = theirs
        param.grad = torch.ones(2)
        guard.on_before_backward(trainer, None, torch.tensor(mine))  # type: ignore[arg-type]
        guard.on_before_optimizer_step(trainer, None, opt)  # type: ignore[arg-type]
        trainer.global_step += 1
        return bool(trainer.should_stop)

    assert not step(1.0, 3.0) and guard.reference == 2.0  # the mean of the two ranks
    assert not step(1.0, 10.0)  # mean 5.5 <= 6, although the other rank's 10 is above on its own
    assert step(1.0, 12.0) and guard.bad_steps == [2]  # mean 6.5 > 6: every rank stops
