"""A Schedule resumed with a longer run (max_epochs 2 -> 4) uses the new configuration's closed form at the restored
step for every step after resume, the first included; oracle: warm-up + cosine written out by hand."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_tricks.schedules import Schedule
from tests.helpers.tiny import BlobsDataModule, tiny_trainer
from tests.schedules.cases import BASE, SPE, _cos, _warm
from tests.schedules.test_trainer import ScheduledClassifier

WARMUP = 2


def _expected(step: int, total: int) -> float:
    return BASE * _warm(step, WARMUP, 0.01) if step < WARMUP else _cos(BASE, step - WARMUP, total - WARMUP)


def _fit(root: Path, max_epochs: int, ckpt_path: str | None = None) -> ScheduledClassifier:
    model = ScheduledClassifier()
    model.scheduler_partial = functools.partial(Schedule, body="cosine", warmup_steps=WARMUP)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    trainer = tiny_trainer(root, max_epochs=max_epochs, accumulate_grad_batches=2, limit_val_batches=1,
                           callbacks=[ckpt])
    trainer.fit(model, BlobsDataModule(n=96, batch_size=16), ckpt_path=ckpt_path)  # 3 optimizer steps / epoch
    return model


def test_resumed_schedule_with_a_longer_run_uses_the_new_closed_form_at_every_step(tmp_path: Path) -> None:
    first = _fit(tmp_path, max_epochs=2)
    assert [s for s, _ in first.used] == list(range(2 * SPE))
    for step, lr in first.used:
        assert lr == pytest.approx(_expected(step, 2 * SPE), rel=1e-12, abs=1e-15)
    resumed = _fit(tmp_path, max_epochs=4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [s for s, _ in resumed.used] == list(range(2 * SPE, 4 * SPE))
    for step, lr in resumed.used:  # the first resumed step included (it used the old run's last lr, 0.0)
        assert lr == pytest.approx(_expected(step, 4 * SPE), rel=1e-12, abs=1e-15), step
