"""ONE fit of a ``torch.compile``d network (backend aot_eager, so parameter names carry ``_orig_mod.``) carrying every
callback; each cell checks one callback against its oracle (see tests/matrix/allfit.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.matrix import allfit
from tests.matrix.cells import cell
from tests.matrix.models import BlobsDataModule, tiny_trainer

NAN_STEP = 3


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import lightning.pytorch as pl

    out = tmp_path_factory.mktemp("compiled")
    pl.seed_everything(0, verbose=False)
    model = allfit.AllModel(nan_step=NAN_STEP, compile_net=True)
    trainer = tiny_trainer(out, max_epochs=3, callbacks=allfit.all_callbacks(out), num_sanity_val_steps=0,
                           limit_val_batches=2, deterministic=False)
    trainer.fit(model, datamodule=BlobsDataModule(n=128))
    rec = allfit.load(out)
    assert any("_orig_mod." in k for k in rec["start"]), "the network was not compiled"
    return rec


@cell("Schedule", "compiled")
def test_compiled_schedule(record: dict[str, Any]) -> None:
    allfit.check_schedule(record)


@cell("NaNGuard", "compiled")
def test_compiled_nan_guard(record: dict[str, Any]) -> None:
    allfit.check_nan_guard(record, NAN_STEP)


@cell("GradientClipping", "compiled")
def test_compiled_clipping(record: dict[str, Any]) -> None:
    allfit.check_clipping(record)


@cell("EMAWeights", "compiled")
def test_compiled_ema(record: dict[str, Any]) -> None:
    allfit.check_ema(record)


@cell("EarlyStopping", "compiled")
def test_compiled_early_stopping(record: dict[str, Any]) -> None:
    allfit.check_early_stopping(record)


@cell("CheckpointEnsemble", "compiled")
def test_compiled_ensemble(record: dict[str, Any]) -> None:
    allfit.check_ensemble(record)


@cell("LearningCurves", "compiled")
def test_compiled_learning_curves(record: dict[str, Any]) -> None:
    allfit.check_learning_curves(record)


@cell("LayerStats", "compiled")
def test_compiled_layer_stats(record: dict[str, Any]) -> None:
    allfit.check_layer_stats(record)


@cell("SanityChecks", "compiled")
def test_compiled_sanity_checks(record: dict[str, Any]) -> None:
    allfit.check_sanity(record)


@cell("Preemption", "compiled")
def test_compiled_preemption(record: dict[str, Any]) -> None:
    allfit.check_preemption(record)
