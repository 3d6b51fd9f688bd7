"""TrickModule logs the training loss only on the steps whose value is read; what is logged equals Lightning's own
``self.log("train/loss", on_step=True, on_epoch=True, prog_bar=True)`` on every step (the oracle)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from lit_tricks.data.digits import DigitsDataModule
from lit_tricks.modules import TrickModule
from tests.helpers.tiny import tiny_trainer

EPS = torch.finfo(torch.float32).eps


class EveryStep(TrickModule):
    """The oracle: Lightning's on_step + on_epoch log, on every step."""

    def log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)


class Counting(TrickModule):
    calls = 0

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name.startswith("train/"):
            Counting.calls += 1
        super().log(name, *args, **kwargs)


def net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def fit(cls: type[TrickModule], tmp_path: Path, ckpt: str | None = None, every: int | None = None,
        l1: float = 0.0, **trainer_kwargs: Any) -> tuple[pl.Trainer, list[dict[str, str]]]:
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=200, val_fraction=0.0)  # 1258 training samples: 7 batches, the last of 58
    module = cls(net(), l1=l1, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)] if every else []
    kwargs: dict[str, Any] = dict(max_epochs=2, log_every_n_steps=3, logger=CSVLogger(tmp_path, name="csv"),
                                  callbacks=callbacks, enable_checkpointing=bool(every), limit_val_batches=0)
    trainer = tiny_trainer(tmp_path, **{**kwargs, **trainer_kwargs})
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:  # type: ignore[union-attr]
        return trainer, list(csv.DictReader(fh))


def close(a: Any, b: Any) -> bool:
    a, b = float(a), float(b)
    return math.isclose(a, b, rel_tol=8 * EPS, abs_tol=8 * EPS)  # sum / n * n / n: a few roundings apart


def assert_same_logs(ours: tuple[pl.Trainer, list[dict[str, str]]],
                     ref: tuple[pl.Trainer, list[dict[str, str]]]) -> None:
    (t_ours, rows_ours), (t_ref, rows_ref) = ours, ref
    for attr in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
        mine, theirs = getattr(t_ours, attr), getattr(t_ref, attr)
        assert sorted(mine) == sorted(theirs), attr
        assert all(close(mine[k], theirs[k]) for k in theirs), (attr, dict(mine), dict(theirs))
    assert [sorted(k for k, v in r.items() if v) for r in rows_ours] == [
        sorted(k for k, v in r.items() if v) for r in rows_ref]
    for a, b in zip(rows_ours, rows_ref):
        assert all(close(a[k], b[k]) for k in b if b[k])


@pytest.mark.parametrize("trainer_kwargs", [{}, {"max_steps": 10}])  # the fit ends at an epoch end, mid-epoch
def test_logged_values_equal_lightnings_every_step_log(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    Counting.calls = 0
    ours = fit(Counting, tmp_path / "ours", **trainer_kwargs)
    ref = fit(EveryStep, tmp_path / "ref", **trainer_kwargs)
    assert_same_logs(ours, ref)
    steps = ours[0].global_step
    # two calls on the read steps (every 3rd, the epochs' last, the fit's last) and two per epoch end
    assert Counting.calls <= 2 * (steps // 3 + 4) + 4 < 2 * steps


def test_penalty_epoch_mean_and_mid_epoch_resume(tmp_path: Path) -> None:
    """``train/penalty`` (an epoch mean) and ``train/loss_epoch`` after a restart from step 9 (epoch 1, mid-epoch:
    the sums of its first 2 batches come from the checkpoint) equal the uninterrupted run's."""
    full = fit(TrickModule, tmp_path / "full", every=3, l1=1e-3)
    assert_same_logs(fit(EveryStepPenalty, tmp_path / "ref", l1=1e-3), full)
    ckpt = next((tmp_path / "full" / "ckpt").glob("*step=9.ckpt"))
    assert torch.load(ckpt, weights_only=True)["lit_tricks_epoch_means"]["means"]["train/loss_epoch"][1] == 400
    _, rows = fit(TrickModule, tmp_path / "resumed", ckpt=str(ckpt), l1=1e-3)
    last = [r for r in full[1] if r["train/loss_epoch"]][-1]
    resumed = [r for r in rows if r["train/loss_epoch"]][-1]
    assert close(resumed["train/loss_epoch"], last["train/loss_epoch"]) and resumed["epoch"] == last["epoch"] == "1"
    assert close(resumed["train/penalty"], last["train/penalty"])


class EveryStepPenalty(EveryStep):
    def accumulate_epoch_mean(self, name: str, value: Tensor, batch_size: int) -> None:
        self.log(name, value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)


class OwnEpochStart(TrickModule):
    """A user's subclass with its own ``on_train_epoch_start``, not calling ``super()`` (Lightning's hook is empty)."""

    def on_train_epoch_start(self) -> None:
        pass


@pytest.mark.parametrize("own_start", [False, True], ids=["plain", "own-epoch-start-without-super"])
def test_the_batch_size_tuners_trials_each_mean_their_own_epoch(tmp_path: Path, own_start: bool) -> None:
    """Lightning's batch-size tuner runs trials that each start epoch 0 again: each means its own losses, so the
    metrics after the tuner (and after the fit that follows) equal the every-step log's (the epoch sums once went on
    across the trials: 2.24 against 2.11), also under a subclass's ``on_train_epoch_start`` without ``super()`` (a
    run of an epoch whose means are logged starts them afresh: 2.30 against 2.26 before)."""
    from lightning.pytorch.tuner import Tuner

    def run(cls: type[TrickModule], root: Path) -> list[dict[str, Any]]:
        pl.seed_everything(0)
        dm = DigitsDataModule(batch_size=16, val_fraction=0.0)
        if own_start:
            cls = type(f"Own{cls.__name__}", (OwnEpochStart, cls), {})
        module = cls(net(), optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
        trainer = tiny_trainer(root, max_epochs=1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                               log_every_n_steps=50)
        Tuner(trainer).scale_batch_size(module, datamodule=dm, mode="power", steps_per_trial=3, max_trials=2)
        after_tuner = dict(trainer.callback_metrics)
        trainer.fit(module, datamodule=dm)
        return [after_tuner, dict(trainer.callback_metrics)]

    ours, ref = run(TrickModule, tmp_path / "ours"), run(EveryStep, tmp_path / "ref")
    for mine, theirs in zip(ours, ref):
        assert sorted(mine) == sorted(theirs) and "train/loss_epoch" in theirs
        assert all(close(mine[k], theirs[k]) for k in theirs), (mine, theirs)
