"""Learning-curve diagnosis on synthetic histories (one per verdict) and on a real short run with a PNG."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_tricks.callbacks.learning_curves import HISTORY_KEYS, LearningCurves, diagnose_history, plot_learning_curves
from lit_tricks.functional.diagnosis import DIAGNOSES, REMEDIES, diagnose, ema_smooth
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


def history(train_err: list[float], val_err: list[float]) -> dict[str, list[float]]:
    n = len(train_err)
    return {"epoch": [float(i) for i in range(n)], "train_loss": [2 * e for e in train_err],
            "val_loss": [2 * e for e in val_err], "train_acc": [1 - e for e in train_err],
            "val_acc": [1 - e for e in val_err]}


CASES = {
    # train error stuck far above a 1% target, val close to train: underfitting
    "high_bias": (history([0.30, 0.25, 0.22, 0.21], [0.31, 0.26, 0.23, 0.22]), 0.01),
    # train error near 0, val error much higher: overfitting
    "high_variance": (history([0.10, 0.03, 0.01, 0.005], [0.15, 0.14, 0.15, 0.16]), 0.0),
    "high_bias_and_variance": (history([0.30, 0.22, 0.20, 0.20], [0.35, 0.33, 0.34, 0.35]), 0.0),
    "fine": (history([0.10, 0.04, 0.02, 0.015], [0.11, 0.05, 0.03, 0.025]), 0.01),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_synthetic_history_diagnosis(kind: str) -> None:
    hist, target = CASES[kind]
    diag = diagnose_history(hist, target, smoothing=0.0)
    assert diag is not None and diag.kind == kind
    assert list(diag.remedies) == REMEDIES[kind]
    assert diag.remedies[0] in diag.message()
    assert set(DIAGNOSES) == set(CASES)


def test_target_error_moves_the_verdict_and_loss_fallback() -> None:
    assert diagnose(0.20, 0.21, target_error=0.19).kind == "fine"  # human-level error is 19%: no avoidable bias
    assert diagnose(0.20, 0.21, target_error=0.0).kind == "high_bias"
    # no accuracies logged: compare losses (variance only, without a target in loss units)
    hist = {"epoch": [0.0, 1.0], "train_loss": [0.5, 0.1], "val_loss": [0.6, 0.9]}
    diag = diagnose_history(hist, smoothing=0.0)
    assert diag is not None and diag.kind == "high_variance"
    assert diagnose_history({"epoch": [0.0]}) is None
    with pytest.raises(ValueError, match="train_error"):
        diagnose(math.nan, 0.1)


def test_ema_smooth_is_debiased() -> None:
    assert ema_smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    s = ema_smooth([0.0, 1.0, math.nan, 1.0], 0.5)
    assert s[0] == 0.0 and s[1] == pytest.approx(0.5 / 0.75) and math.isnan(s[2])
    assert s[3] == pytest.approx(0.75 / 0.875)
    with pytest.raises(ValueError, match="weight"):
        ema_smooth([1.0], 1.0)


def test_plot_writes_png(tmp_path: Path) -> None:
    out = plot_learning_curves(CASES["high_variance"][0], tmp_path / "lc.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_short_run_records_plots_diagnoses_and_resumes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = LearningCurves(dirpath=str(tmp_path / "plots"))
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[cb])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert cb.history["epoch"] == [0.0, 1.0]
    # TinyClassifier logs no train/acc: the callback measures it on the first training samples (eval mode)
    assert all(math.isfinite(cb.history[k][-1]) for k in ("train_loss", "val_loss", "val_acc", "train_acc"))
    assert 0.5 < cb.history["train_acc"][-1] <= 1.0
    assert cb.history["train_loss"][1] < cb.history["train_loss"][0]  # blobs are learnable
    assert cb.diagnosis is not None and cb.diagnosis.kind in DIAGNOSES
    assert cb.png_path is not None and cb.png_path.read_bytes()[:4] == b"\x89PNG"

    state = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)  # type: ignore[union-attr]
    resumed = LearningCurves(dirpath=str(tmp_path / "plots2"))
    tiny_trainer(tmp_path / "r", max_epochs=3, callbacks=[resumed]).fit(
        TinyClassifier(), datamodule=BlobsDataModule(),
        ckpt_path=trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert resumed.state_key in state["callbacks"]
    assert resumed.history["epoch"] == [0.0, 1.0, 2.0]
    for key in HISTORY_KEYS:
        torch.testing.assert_close(torch.tensor(resumed.history[key][:2]), torch.tensor(cb.history[key]),
                                   rtol=0, atol=0, equal_nan=True)


def test_pending_epoch_state_is_restored_not_duplicated() -> None:
    cb = LearningCurves()
    cb._epoch, cb._loss_sum, cb._loss_count = 1, torch.tensor(3.0), 2
    cb._val = {"val_loss": 0.5, "val_acc": 0.8}
    state = cb.state_dict()
    assert state["pending"]["train_loss"] == 1.5

    class FakeTrainer:  # Lightning goes on with epoch 2: the checkpoint was taken at epoch 1's last batch
        current_epoch = 2
        fit_loop = SimpleNamespace(restarted_mid_epoch=False)

    fresh = LearningCurves()
    fresh.load_state_dict(state)
    fresh.on_train_start(FakeTrainer(), None)  # type: ignore[arg-type]
    assert fresh.history["epoch"] == [1.0] and fresh.history["train_loss"] == [1.5]
    FakeTrainer.current_epoch = 1  # resumed inside epoch 1 (no on_train_epoch_start): accumulators back, no row yet
    again = LearningCurves()
    again.load_state_dict(state)
    again.on_train_start(FakeTrainer(), None)  # type: ignore[arg-type]
    assert again.history["epoch"] == [] and again._loss_count == 2 and again._train_loss() == 1.5
    with pytest.raises(ValueError, match="smoothing"):
        LearningCurves(smoothing=1.5)


def test_script_reads_csv_logger_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    tiny_trainer(tmp_path, max_epochs=2, logger=CSVLogger(str(tmp_path), name="csv"), log_every_n_steps=1,
                 enable_checkpointing=False).fit(TinyClassifier(), datamodule=BlobsDataModule())
    spec = importlib.util.spec_from_file_location("lc_script", Path(__file__).parents[2] / "scripts" /
                                                  "learning_curves.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    csv_path = script.find_metrics_csv(tmp_path)
    history = script.history_from_csv(csv_path, {"train_loss": "train/loss", "val_loss": "val/loss",
                                                 "train_acc": "train/acc", "val_acc": "val/acc"})
    assert history["epoch"] == [0.0, 1.0]
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_loss"] + history["val_acc"])
    assert script.main([str(tmp_path), "--out", str(tmp_path / "lc.png")]) == 0
    assert (tmp_path / "lc.png").read_bytes()[:4] == b"\x89PNG"
    assert "remedies:" in capsys.readouterr().out
