"""A short run of lit-tricks-train, preempted by SIGTERM and resumed, prints none of the lines a user cannot act on
(Lightning's _pytree deprecation, the litlogger tip, weights_only after a preemption); other output stays."""

from __future__ import annotations

import os
import re
import signal
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from lit_tricks.cli.noise import NOISE
from tests.helpers.cli import run_train_cli

QUICK = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2"]


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM after training batch ``batch`` of the first epoch (a preemption)."""

    def __init__(self, batch: int = 1) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 0 and args[-1] == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.timeout(240)
def test_a_preempted_and_resumed_run_prints_no_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIT_TRICKS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    with warnings.catch_warnings(record=True) as caught:
        first = run_train_cli(monkeypatch, run_dir, *QUICK, f"+callbacks.sigterm._target_={__name__}.SigtermAt")
        second = run_train_cli(monkeypatch, run_dir, *QUICK, "resume=auto")
    assert first in (0, None) and second in (0, None)
    assert (tmp_path / "run" / "checkpoints" / "last-preempted.ckpt").is_file()  # it was preempted, then resumed
    out = capfd.readouterr()
    text = out.err + out.out + "\n".join(str(w.message) for w in caught)
    for pattern in NOISE:
        assert not re.search(pattern, text), pattern
    assert "lit_tricks: objective val/loss=" in out.out  # the run's own summary is still printed
