"""SanityChecks on a correct model, a wrong label mapping and an exploding init."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from lit_tricks.callbacks.sanity_checks import SanityCheckError, SanityChecks
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


class WrongLabels(TinyClassifier):
    """A classic bug: the training step shifts the labels (an off-by-one class mapping)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), (y + 1) % 3)


def exploding() -> TinyClassifier:
    model = TinyClassifier()
    with torch.no_grad():
        model.net[-1].weight.mul_(100.0)
    return model


def fit(tmp_path: Path, model: TinyClassifier, cb: SanityChecks) -> Any:
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[cb])
    trainer.fit(model, datamodule=BlobsDataModule())
    return trainer


def test_correct_model_passes_both_checks_and_is_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = SanityChecks(on_failure="raise")
    cb.run_checks(_attached(tmp_path, model), model)
    assert cb.results["init_loss"]["passed"] and cb.results["overfit"]["passed"]
    assert abs(float(cb.results["init_loss"]["loss"]) - math.log(3)) < 0.25 * math.log(3)
    assert float(cb.results["overfit"]["accuracy"]) == 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats included

    trainer = fit(tmp_path, TinyClassifier(), cb2 := SanityChecks())
    assert trainer.global_step == 2 and cb2.done and cb2.state_dict() == {"version": 1, "done": True}


def _attached(tmp_path: Path, model: TinyClassifier) -> Any:
    """Stands in for the trainer at on_train_start: only its train dataloader is read."""
    dm = BlobsDataModule()
    dm.setup("fit")
    return SimpleNamespace(train_dataloader=dm.train_dataloader())


def test_wrong_label_mapping_fails_overfit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(SanityCheckError, match=r"FAILED\] overfit"):
        fit(tmp_path, WrongLabels(), SanityChecks(check_init_loss=False, overfit_steps=60))


def test_exploding_init_fails_init_loss_and_stop_ends_before_step_0(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = SanityChecks(on_failure="stop", check_overfit=False)
    trainer = fit(tmp_path, exploding(), cb)
    assert not cb.results["init_loss"]["passed"]
    assert float(cb.results["init_loss"]["ratio"]) > 2.0
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match="on_failure"):
        SanityChecks(on_failure="ignore")
