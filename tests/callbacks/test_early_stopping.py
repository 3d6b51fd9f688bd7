"""EarlyStopping: drop-in for Lightning's, plus start_from_epoch and restore_best_weights, exact resume."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from torch import Tensor

from lit_tricks.callbacks.early_stopping import EarlyStopping
from lit_tricks.callbacks.ema import EMAWeights
from tests.callbacks.test_ema import VariantsClassifier, _clone, _equal, no_dropout
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

SCORES = [3.0, 1.0, 2.0, 2.5, 0.5, 4.0, 5.0, 6.0]  # best at epoch 1; patience 2 stops at epoch 3


class Scripted(TinyClassifier):
    """Logs a scripted ``val/score`` per epoch, so that the early-stopping decisions are known in advance."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/score", SCORES[self.current_epoch])


class EvaluatedWeights(Callback):
    """Weights seen by validation (first batch) and the EMA at each validation, per epoch."""

    def __init__(self, ema: EMAWeights | None = None) -> None:
        self.ema = ema
        self.seen: dict[int, dict[str, Tensor]] = {}
        self.ema_at: dict[int, dict[str, Tensor]] = {}

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self.seen[trainer.current_epoch] = _clone(pl_module)
            if self.ema is not None:
                self.ema_at[trainer.current_epoch] = {k: v.clone() for k, v in self.ema.ema_state_dict.items()}


def _fit(tmp_path: Path, callbacks: list[Callback], max_epochs: int, model: pl.LightningModule | None = None,
         ckpt_path: str | None = None) -> tuple[pl.Trainer, pl.LightningModule]:
    torch.manual_seed(0)
    model = model if model is not None else no_dropout(Scripted())
    trainer = tiny_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks)
    trainer.fit(model, datamodule=BlobsDataModule(shuffle=False), ckpt_path=ckpt_path)
    return trainer, model


def test_signature_extends_lightnings() -> None:
    ours = inspect.signature(EarlyStopping).parameters
    for name, p in inspect.signature(LightningEarlyStopping).parameters.items():
        assert ours[name].default == p.default and ours[name].kind == p.kind, name
    assert ours["start_from_epoch"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["start_from_epoch"].default == 0 and ours["restore_best_weights"].default is False


def test_same_decisions_as_lightning(tmp_path: Path) -> None:
    ours, theirs = EarlyStopping("val/score", patience=2), LightningEarlyStopping("val/score", patience=2)
    t1, _ = _fit(tmp_path / "a", [ours], max_epochs=8)
    t2, _ = _fit(tmp_path / "b", [theirs], max_epochs=8)
    assert t1.current_epoch == t2.current_epoch == 4  # stopped after epoch 3
    assert ours.stopped_epoch == theirs.stopped_epoch == 3
    assert (ours.wait_count, float(ours.best_score), ours.stopping_reason) == (
        theirs.wait_count, float(theirs.best_score), theirs.stopping_reason)
    assert ours.best_epoch == 1
    assert ours.state_key == theirs.state_key


def test_start_from_epoch_delays_checks(tmp_path: Path) -> None:
    es = EarlyStopping("val/score", patience=2, start_from_epoch=4)
    trainer, _ = _fit(tmp_path, [es], max_epochs=8)
    assert trainer.current_epoch == 7
    # first check at epoch 4 (best 0.5), no improvement at 5 and 6 -> stop at 6
    assert es.stopped_epoch == 6 and es.best_epoch == 4 and float(es.best_score) == 0.5
    with pytest.raises(ValueError, match="start_from_epoch"):
        EarlyStopping("val/score", start_from_epoch=-1)


def test_restore_best_weights_and_log_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    es, seen = EarlyStopping("val/score", patience=2, restore_best_weights=True), EvaluatedWeights()
    with caplog.at_level(logging.INFO, logger="lit_tricks.callbacks.early_stopping"):
        _, model = _fit(tmp_path, [seen, es], max_epochs=8)
    assert es.stopped_epoch == 3 and es.best_epoch == 1
    assert es.best_weights is not None and all(t.device.type == "cpu" for t in es.best_weights.values())
    assert _equal(_clone(model), seen.seen[1])
    assert not _equal(_clone(model), seen.seen[3])
    text = caplog.text
    assert "stopped training at epoch 3" in text and "did not improve" in text
    assert "restored the weights of epoch 1" in text


def test_restore_best_weights_at_max_epochs_without_stop(tmp_path: Path) -> None:
    es, seen = EarlyStopping("val/score", patience=10, restore_best_weights=True), EvaluatedWeights()
    _, model = _fit(tmp_path, [seen, es], max_epochs=3)
    assert es.stopped_epoch == 0 and es.best_epoch == 1
    assert _equal(_clone(model), seen.seen[1])


def test_resume_keeps_counters_and_best_weights(tmp_path: Path) -> None:
    def cbs(d: Path) -> tuple[EarlyStopping, list[Callback]]:
        es = EarlyStopping("val/score", patience=2, restore_best_weights=True)
        return es, [es, ModelCheckpoint(dirpath=d, save_last=True)]

    es_a, c = cbs(tmp_path / "a")
    _, model_a = _fit(tmp_path / "a", c, max_epochs=8)
    _, c = cbs(tmp_path / "b")
    _fit(tmp_path / "b", c, max_epochs=3)  # stops at max_epochs before patience runs out
    ck = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    es_b, c = cbs(tmp_path / "b")
    state = ck["callbacks"][es_b.state_key]
    assert state["version"] == 1 and state["wait_count"] == 1 and state["best_epoch"] == 1
    _, model_b = _fit(tmp_path / "b", c, max_epochs=8, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert es_a.stopped_epoch == es_b.stopped_epoch == 3
    assert (es_a.wait_count, es_a.best_epoch) == (es_b.wait_count, es_b.best_epoch)
    assert es_a.best_weights is not None and es_b.best_weights is not None
    assert _equal(es_a.best_weights, es_b.best_weights)
    assert _equal(_clone(model_a), _clone(model_b))


def test_restores_the_monitored_variant_with_validate_both(tmp_path: Path) -> None:
    ema = EMAWeights(decay=0.9, validate_both=True, apply_at_end=False)
    es = EarlyStopping("val/loss_ema", patience=100, restore_best_weights=True)
    seen = EvaluatedWeights(ema)

    class Losses(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                self.values.append(float(trainer.callback_metrics["val/loss_ema"]))

    losses = Losses()
    _, model = _fit(tmp_path, [seen, ema, es, losses], max_epochs=3, model=no_dropout(VariantsClassifier()))
    best = min(range(3), key=lambda i: losses.values[i])
    assert es.best_epoch == best
    assert _equal(_clone(model), seen.ema_at[best])  # the EMA weights that produced val/loss_ema
    assert not _equal(_clone(model), seen.seen[best])  # not the raw weights validated beside them
