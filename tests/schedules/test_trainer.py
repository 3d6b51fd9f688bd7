"""Real Trainer runs: the lr the optimizer used at every optimizer step equals the closed form (rtol 1e-12), with
gradient accumulation, across a stop/resume mid-schedule, for every conf/scheduler preset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lit_tricks.schedules import lr_scheduler_config
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer
from tests.schedules.cases import BASE, CASES, EPOCHS, PLATEAU, SPE, TOTAL, plateau_expected, scheduler_partial


class ScheduledClassifier(TinyClassifier):
    """TinyClassifier whose configure_optimizers goes through lr_scheduler_config; records (step, lr) used."""

    def __init__(self) -> None:
        super().__init__(lr=BASE)
        self.scheduler_partial: Any = None  # set after __init__: save_hyperparameters must not capture it
        self.used: list[tuple[int, float]] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=BASE, momentum=0.9)
        config = lr_scheduler_config(self.scheduler_partial, opt, self.trainer)
        return opt if config is None else {"optimizer": opt, "lr_scheduler": config}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.used.append((self.trainer.global_step, float(optimizer.param_groups[0]["lr"])))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val/const", 1.0)


def _fit(tmp_path: Path, scheduler: Any, ckpt_path: str | None = None, callbacks: list[pl.Callback] | None = None,
         ) -> tuple[pl.Trainer, ScheduledClassifier]:
    pl.seed_everything(0, workers=True)
    model = ScheduledClassifier()
    model.scheduler_partial = scheduler
    trainer = tiny_trainer(tmp_path, max_epochs=EPOCHS, accumulate_grad_batches=2, limit_val_batches=1,
                           callbacks=callbacks or [], enable_checkpointing=False)
    trainer.fit(model, BlobsDataModule(n=96, batch_size=16), ckpt_path=ckpt_path)  # 6 batches -> 3 steps / epoch
    return trainer, model


def _check(used: list[tuple[int, float]], expected: Any) -> None:
    for step, lr in used:
        assert lr == pytest.approx(expected(step), rel=1e-12, abs=1e-15), step


@pytest.mark.parametrize("name", [*sorted(CASES), "plateau", "none"])
def test_every_preset_in_a_trainer(tmp_path: Path, name: str) -> None:
    if name == "plateau":
        overrides, expected = PLATEAU, plateau_expected
    elif name == "none":
        overrides, expected = {}, lambda s: BASE
    else:
        overrides, expected = CASES[name]
    trainer, model = _fit(tmp_path, scheduler_partial(name, overrides))
    assert [s for s, _ in model.used] == list(range(TOTAL))  # one scheduler step per optimizer step
    _check(model.used, expected)
    if name == "sgdr":
        assert trainer.lr_scheduler_configs[0].scheduler.cycle_ends() == [SPE, 3 * SPE]  # cycles of 3 and 6 steps


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _warmup5(s: int) -> float:
    return BASE * (0.01 + 0.99 * s / 5) if s < 5 else _cosine_after(s, 5)


def _cosine_after(s: int, w: int) -> float:
    return BASE * (1 + math.cos(math.pi * (s - w) / (TOTAL - w))) / 2


RESUME_CASES = {
    # stop at step 3, in the middle of a 5-step warm-up
    "warmup_cosine": ({"warmup_epochs": None, "warmup_steps": 5}, _warmup5, SPE),
    # stop at step 6, in the middle of the second SGDR cycle [3, 9)
    "sgdr": (CASES["sgdr"][0], CASES["sgdr"][1], 2 * SPE),
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_stop_resume_mid_schedule_is_exact(tmp_path: Path, name: str) -> None:
    overrides, expected, stop = RESUME_CASES[name]
    _, full = _fit(tmp_path / "full", scheduler_partial(name, overrides))
    first_trainer, first = _fit(tmp_path / "a", scheduler_partial(name, overrides), callbacks=[_StopAt(stop)])
    assert [s for s, _ in first.used] == list(range(stop))
    ckpt = tmp_path / "stop.ckpt"
    first_trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)  # plain scheduler state
    assert state["lr_schedulers"][0]["last_epoch"] == stop
    _, second = _fit(tmp_path / "b", scheduler_partial(name, overrides), ckpt_path=str(ckpt))
    assert [s for s, _ in second.used] == list(range(stop, TOTAL))
    assert first.used + second.used == full.used  # bit for bit
    _check(full.used, expected)
