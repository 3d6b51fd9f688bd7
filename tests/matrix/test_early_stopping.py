"""EarlyStopping cells. Oracle: Lightning's own EarlyStopping in the same run, on the same metric stream (a subclass,
so that the two state keys differ); for restored weights, a recorder's snapshot of the weights evaluated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningES

from lit_tricks.callbacks import EarlyStopping, RNGState
from tests.matrix.cells import cell
from tests.matrix.models import ScriptedMetric, fit, tied_classifier

NAN, INF = math.nan, math.inf


class Oracle(LightningES):
    """Lightning's EarlyStopping under another class name (state keys are built from it)."""


COMPARED = ("wait_count", "stopped_epoch", "stopping_reason")


def assert_same_decisions(ours: EarlyStopping, theirs: LightningES) -> None:
    for attr in COMPARED:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    a, b = float(ours.best_score), float(theirs.best_score)
    assert a == b or (math.isnan(a) and math.isnan(b))


def both(**kw: Any) -> tuple[EarlyStopping, Oracle]:
    return EarlyStopping(**kw), Oracle(**kw)


STREAMS = {
    "patience": ([3.0, 2.0, 2.5, 2.4, 2.2, 2.1, 1.0], dict(patience=3)),
    "stopping_threshold": ([3.0, 2.0, 0.4, 0.3], dict(patience=9, stopping_threshold=0.5)),
    "divergence_threshold": ([3.0, 2.0, 12.0, 1.0], dict(patience=9, divergence_threshold=10.0)),
    "non_finite_nan": ([3.0, 2.0, NAN, 1.0], dict(patience=9)),
    "non_finite_inf": ([3.0, INF, 1.0], dict(patience=9)),
    "max_epochs": ([3.0, 2.0, 1.0, 0.5, 0.4, 0.3], dict(patience=2)),
    "min_delta_max_mode": ([0.1, 0.2, 0.25, 0.26, 0.27], dict(patience=2, mode="max", min_delta=0.05)),
}


@pytest.mark.parametrize("reason", sorted(STREAMS))
@cell("EarlyStopping", "stop_reasons")
def test_every_stop_reason_matches_lightning(tmp_path: Path, reason: str) -> None:
    scores, kw = STREAMS[reason]
    ours, theirs = both(monitor="val/score", **kw)
    trainer = fit(tmp_path, lambda: ScriptedMetric(scores), [ours, theirs], max_epochs=6, limit_train_batches=1,
                  limit_val_batches=1)
    assert_same_decisions(ours, theirs)
    assert trainer.current_epoch == (6 if reason == "max_epochs" else ours.stopped_epoch + 1)
    assert (ours.stopping_reason_message is None) == (reason == "max_epochs")


@cell("EarlyStopping", "monitor")
def test_nan_monitor_with_check_finite_off_matches_lightning(tmp_path: Path) -> None:
    ours, theirs = both(monitor="val/score", patience=2, check_finite=False)
    fit(tmp_path, lambda: ScriptedMetric([3.0, NAN, 2.0, NAN, NAN, NAN]), [ours, theirs], max_epochs=6,
        limit_train_batches=1, limit_val_batches=1)
    assert_same_decisions(ours, theirs)
    assert ours.best_epoch == 2  # NaN never improves on a finite best


@cell("EarlyStopping", "monitor")
def test_train_only_metric_matches_lightning_and_restores_train_end_weights(tmp_path: Path) -> None:
    class Snap(Callback):
        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    snap = Snap()
    ours = EarlyStopping(monitor="train/score", patience=1, restore_best_weights=True)
    theirs = Oracle(monitor="train/score", patience=1)
    model = ScriptedMetric([3.0, 1.0, 2.0, 2.5, 0.1], train_only=True)
    fit(tmp_path, model, [snap, ours, theirs], max_epochs=5, limit_train_batches=2, limit_val_batches=0)
    assert_same_decisions(ours, theirs)
    assert ours.best_epoch == 1 and ours.stopped_epoch == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap.weights[1][k]), k


@pytest.mark.parametrize("schedule", ["check_val_every_n_epoch", "val_check_interval"])
@cell("EarlyStopping", "val_schedule")
def test_validation_schedules_match_lightning(tmp_path: Path, schedule: str) -> None:
    kw = dict(check_val_every_n_epoch=2) if schedule == "check_val_every_n_epoch" else dict(val_check_interval=0.5)
    ours, theirs = both(monitor="val/score", patience=2)
    fit(tmp_path, lambda: ScriptedMetric([3.0, 2.0, 2.5, 2.4, 2.6, 2.7, 2.8, 2.9], by_epoch=False), [ours, theirs],
        max_epochs=8, limit_train_batches=2, limit_val_batches=1, **kw)
    assert_same_decisions(ours, theirs)
    assert ours.stopped_epoch > 0


@cell("EarlyStopping", "tied")
def test_restore_best_weights_keeps_ties(tmp_path: Path) -> None:
    class Snap(Callback):
        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    class TiedScripted(ScriptedMetric):
        pass

    model = TiedScripted([3.0, 1.0, 2.0, 2.5])
    model.net = tied_classifier().net
    snap, es = Snap(), EarlyStopping(monitor="val/score", patience=2, restore_best_weights=True)
    fit(tmp_path, model, [snap, es], max_epochs=4, limit_train_batches=2, limit_val_batches=1)
    assert es.best_epoch == 1 and model.net.dec.weight is model.net.enc.weight
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap.weights[1][k]), k


@cell("EarlyStopping", "second_fit")
def test_second_fit_same_instance_matches_lightning(tmp_path: Path) -> None:
    ours, theirs = both(monitor="val/score", patience=2)
    for run in ("a", "b"):
        fit(tmp_path / run, lambda: ScriptedMetric([3.0, 2.0, 2.5, 2.6, 2.7]), [ours, theirs], max_epochs=5,
            limit_train_batches=1, limit_val_batches=1)
        assert_same_decisions(ours, theirs)


@cell("EarlyStopping", "resume_changed")
def test_resume_with_longer_max_epochs_equals_uninterrupted(tmp_path: Path) -> None:
    scores = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.8]
    kw = dict(limit_train_batches=1, limit_val_batches=1)
    ref = EarlyStopping(monitor="val/score", patience=2, restore_best_weights=True)
    fit(tmp_path / "ref", lambda: ScriptedMetric(scores), [ref, RNGState()], max_epochs=7, **kw)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path / "run", lambda: ScriptedMetric(scores), [EarlyStopping(monitor="val/score", patience=2,
        restore_best_weights=True), RNGState(), ck], enable_checkpointing=True, max_epochs=3, **kw)
    resumed = EarlyStopping(monitor="val/score", patience=2, restore_best_weights=True)
    fit(tmp_path / "run", lambda: ScriptedMetric(scores), [resumed, RNGState()], max_epochs=7,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"), **kw)
    for attr in (*COMPARED, "best_epoch"):
        assert getattr(resumed, attr) == getattr(ref, attr), attr
    assert resumed.best_weights is not None and ref.best_weights is not None
    assert all(torch.equal(resumed.best_weights[k], v) for k, v in ref.best_weights.items())


@cell("EarlyStopping", "load_other_args")
def test_load_state_into_other_arguments(tmp_path: Path) -> None:
    src = EarlyStopping(monitor="val/score", patience=5, restore_best_weights=True)
    fit(tmp_path, lambda: ScriptedMetric([3.0, 1.0, 2.0]), [src], max_epochs=3, limit_train_batches=1,
        limit_val_batches=1)
    dst = EarlyStopping(monitor="val/score", patience=1, restore_best_weights=True)
    dst.load_state_dict(src.state_dict())
    assert (dst.wait_count, dst.best_epoch, float(dst.best_score)) == (1, 1, 1.0)
    assert dst.best_weights is not None
    theirs = Oracle(monitor="val/score", patience=1)
    theirs.load_state_dict(src.state_dict())  # Lightning reads the same keys, patience included (its semantics)
    assert (theirs.wait_count, theirs.patience) == (dst.wait_count, dst.patience) == (1, 5)
    assert float(theirs.best_score) == float(dst.best_score)
