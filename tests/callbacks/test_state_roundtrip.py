"""Shared round trip over every lit_tricks callback: after a real fit, ``state_dict`` is plain (loads with
``torch.load(weights_only=True)``), carries a version, and ``load_state_dict`` into a fresh instance gives back the
same state; two instances with different arguments get different ``state_key``s."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lit_tricks import callbacks as cb
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

# name -> (factory, factory with other arguments)
FACTORIES: dict[str, tuple[Callable[[], pl.Callback], Callable[[], pl.Callback] | None]] = {
    "EarlyStopping": (lambda: cb.EarlyStopping(monitor="val/loss", patience=5),
                      lambda: cb.EarlyStopping(monitor="val/acc", mode="max")),
    "EMAWeights": (lambda: cb.EMAWeights(decay=0.9, save_ema_checkpoint=False),
                   lambda: cb.EMAWeights(decay=0.5, save_ema_checkpoint=False)),
    "PostHocEMA": (lambda: cb.PostHocEMA(snapshot_every_n_steps=3),
                   lambda: cb.PostHocEMA(sigma_rels=[0.02, 0.2], snapshot_every_n_steps=3)),
    "CheckpointEnsemble": (lambda: cb.CheckpointEnsemble(every_n_epochs=1),
                           lambda: cb.CheckpointEnsemble(top_k=2, monitor="val/loss")),
    "GradientClipping": (lambda: cb.GradientClipping(mode="auto", history=50),
                         lambda: cb.GradientClipping(mode="norm", max_norm=1.0)),
    "NaNGuard": (lambda: cb.NaNGuard(policy="skip_step", divergence_factor=3.0),
                 lambda: cb.NaNGuard(policy="stop")),
    "RNGState": (lambda: cb.RNGState(), None),
    "LayerStats": (lambda: cb.LayerStats(every_n_steps=2), None),
    "LearningCurves": (lambda: cb.LearningCurves(), None),
}


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:  # nan
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.timeout(120)
def test_state_roundtrip_after_fit(tmp_path: Path, name: str) -> None:
    make, make_other = FACTORIES[name]
    callback = make()
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[callback], limit_train_batches=4)
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    state = callback.state_dict()
    assert isinstance(state, dict) and state, f"{name} keeps no state"
    assert "version" in state, f"{name}.state_dict() has no version key"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain types and tensors only
    assert_same(state, loaded)
    fresh = make()
    fresh.load_state_dict(loaded)
    assert_same(state, fresh.state_dict())
    if make_other is not None:
        assert make().state_key != make_other().state_key
