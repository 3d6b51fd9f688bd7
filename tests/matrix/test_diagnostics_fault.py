"""LearningCurves, LayerStats, SanityChecks, RNGState and Preemption cells. Oracles: the losses ``training_step``
returned (recorded by the module itself), ``||w' - w|| / ||w||`` from recorded weights, cross-entropy of the
untrained model written out, and the uninterrupted run (bit for bit) for resumes."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from lit_tricks.callbacks import LayerStats, LearningCurves, Preemption, RNGState, SanityChecks
from lit_tricks.fault.rng import restore_rng_states
from tests.helpers.tiny import make_blobs
from tests.matrix.cells import cell
from tests.matrix.models import (
    BlobsDataModule,
    ManualClassifier,
    StepRecorder,
    TinyClassifier,
    TwoOptimizerClassifier,
    fit,
    iterable_loader,
    tied_classifier,
    tiny_trainer,
)


class LossLog(TinyClassifier):
    """Records what its training_step returned, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.returned: dict[int, list[float]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.returned.setdefault(self.current_epoch, []).append(float(loss))
        return loss


def epoch_means(returned: dict[int, list[float]]) -> list[float]:
    return [sum(v) / len(v) for _, v in sorted(returned.items())]


# ---------------------------------------------------------------- LearningCurves
@cell("LearningCurves", "accumulation")
def test_learning_curves_train_loss_is_the_mean_training_step_loss_under_accumulation(tmp_path: Path) -> None:
    lc = LearningCurves(plot=False, train_eval_samples=0)
    model = LossLog()
    fit(tmp_path, model, [lc], max_epochs=2, limit_train_batches=3, accumulate_grad_batches=2)
    assert lc.history["train_loss"] == pytest.approx(epoch_means(model.returned), rel=1e-6)


@cell("LearningCurves", "manual")
def test_learning_curves_manual_optimization(tmp_path: Path) -> None:
    class ManualLog(ManualClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.returned: dict[int, list[float]] = {}

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            loss = super().training_step(batch, batch_idx)
            self.returned.setdefault(self.current_epoch, []).append(float(loss))
            return loss

    lc, model = LearningCurves(plot=False, train_eval_samples=0), ManualLog()
    fit(tmp_path, model, [lc], max_epochs=2, limit_train_batches=2)
    assert lc.history["train_loss"] == pytest.approx(epoch_means(model.returned), rel=1e-6)


@cell("LearningCurves", "multi_val")
def test_learning_curves_reads_one_loader_of_several(tmp_path: Path) -> None:
    from tests.matrix.models import BlobsDataModule, MultiValClassifier

    class TwoLoaders(BlobsDataModule):
        def val_dataloader(self) -> list:
            return [super().val_dataloader(), super().val_dataloader()]

    seen: list[float] = []

    class Grab(Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(float(trainer.callback_metrics["val/loss/dataloader_idx_1"]))

    lc = LearningCurves(plot=False, train_eval_samples=0, val_loss_key="val/loss/dataloader_idx_1")
    fit(tmp_path, MultiValClassifier, [Grab(), lc], datamodule=TwoLoaders(n=128), max_epochs=2, limit_train_batches=2)
    assert lc.history["val_loss"] == pytest.approx(seen)


@cell("LearningCurves", "resume_changed")
def test_learning_curves_resume_with_longer_max_epochs_equals_uninterrupted(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(limit_train_batches=2)
    ref = LearningCurves(plot=False, train_eval_samples=16)
    fit(tmp_path / "ref", TinyClassifier, [ref, RNGState()], max_epochs=3, **kw)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path / "run", TinyClassifier, [LearningCurves(plot=False, train_eval_samples=16), RNGState(), ck],
        enable_checkpointing=True, max_epochs=2, **kw)
    resumed = LearningCurves(plot=False, train_eval_samples=16)
    fit(tmp_path / "run", TinyClassifier, [resumed, RNGState()], max_epochs=3,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"), **kw)
    assert resumed.history == ref.history


@cell("LearningCurves", "iterable")
def test_learning_curves_iterable_max_steps(tmp_path: Path) -> None:
    lc, model = LearningCurves(plot=False, train_eval_samples=16), LossLog()
    pl.seed_everything(0)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[lc], enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=iterable_loader())
    assert lc.history["train_loss"] == pytest.approx(epoch_means(model.returned), rel=1e-6)
    assert all(0.0 <= a <= 1.0 for a in lc.history["train_acc"])  # measured on the iterable loader


# ---------------------------------------------------------------- LayerStats
def expected_ratios(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    return {k: float((after[k] - b).norm() / (b.norm() + 1e-12)) for k, b in before.items()}


@cell("LayerStats", "accumulation")
def test_layer_stats_measure_the_window_step(tmp_path: Path) -> None:
    stats, rec = LayerStats(every_n_steps=1, log=False), StepRecorder()
    fit(tmp_path, TinyClassifier, [stats, rec], max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2)
    for k, v in expected_ratios(rec.params[0], rec.params[1]).items():
        assert stats.last[f"{k}/update_ratio"] == pytest.approx(v, rel=1e-5)
    for k, g in rec.grads[-1].items():
        assert stats.last[f"{k}/grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)


@cell("LayerStats", "tied")
def test_layer_stats_tied_parameter_once(tmp_path: Path) -> None:
    stats, rec = LayerStats(every_n_steps=1, log=False), StepRecorder()
    fit(tmp_path, tied_classifier, [stats, rec], max_epochs=1, limit_train_batches=2)
    assert "net.dec.weight/update_ratio" not in stats.last
    for k, v in expected_ratios(rec.params[0], rec.params[1]).items():
        assert stats.last[f"{k}/update_ratio"] == pytest.approx(v, rel=1e-5)


@cell("LayerStats", "two_optimizers")
def test_layer_stats_two_optimizers_whole_batch_update(tmp_path: Path) -> None:
    stats, rec = LayerStats(every_n_steps=2, log=False), StepRecorder()
    fit(tmp_path, TwoOptimizerClassifier, [stats, rec], max_epochs=1, limit_train_batches=2)
    for k, v in expected_ratios(rec.params[0], rec.params[1]).items():  # both optimizers' steps of batch 1
        assert stats.last[f"{k}/update_ratio"] == pytest.approx(v, rel=1e-5)


@cell("LayerStats", "bf16")
def test_layer_stats_bf16(tmp_path: Path) -> None:
    stats, rec = LayerStats(every_n_steps=1, log=False), StepRecorder()
    fit(tmp_path, TinyClassifier, [stats, rec], precision="bf16-mixed", max_epochs=1, limit_train_batches=2)
    for k, v in expected_ratios(rec.params[0], rec.params[1]).items():
        assert stats.last[f"{k}/update_ratio"] == pytest.approx(v, rel=1e-5)
    assert all(math.isfinite(v) for v in stats.last.values())


# ---------------------------------------------------------------- SanityChecks
def init_loss_oracle(model: nn.Module, n: int = 128) -> float:
    model = model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    x, y = make_blobs(n).tensors
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("kind", ["manual", "two_optimizers", "tied"])
def _unused(kind: str) -> None:  # pragma: no cover - keeps parametrize import used when cells change
    pass


@cell("SanityChecks", "manual")
def test_sanity_checks_manual_optimization(tmp_path: Path) -> None:
    import copy

    pl.seed_everything(0)
    model = ManualClassifier()
    expected = init_loss_oracle(copy.deepcopy(model))
    sc = SanityChecks(on_failure="raise", overfit_steps=100)
    fit(tmp_path, model, [sc], max_epochs=1, limit_train_batches=1)
    assert sc.results["init_loss"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert sc.results["overfit"]["passed"] is True


@cell("SanityChecks", "tied")
def test_sanity_checks_tied(tmp_path: Path) -> None:
    import copy

    pl.seed_everything(0)
    model = tied_classifier()
    expected = init_loss_oracle(copy.deepcopy(model))
    sc = SanityChecks(on_failure="raise", overfit_steps=150)
    fit(tmp_path, model, [sc], max_epochs=1, limit_train_batches=1)
    assert sc.results["init_loss"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert model.net.dec.weight is model.net.enc.weight


@cell("SanityChecks", "iterable")
def test_sanity_checks_iterable_dataset(tmp_path: Path) -> None:
    import copy

    pl.seed_everything(0)
    model = TinyClassifier()
    expected = init_loss_oracle(copy.deepcopy(model))
    sc = SanityChecks(on_failure="raise", overfit_steps=100)
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[sc], enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=iterable_loader())
    assert sc.results["init_loss"]["loss"] == pytest.approx(expected, rel=1e-5)


@cell("SanityChecks", "second_fit")
def test_sanity_checks_run_once_per_instance(tmp_path: Path) -> None:
    sc = SanityChecks(on_failure="raise", overfit_steps=100)
    model = TinyClassifier()
    fit(tmp_path / "a", model, [sc], max_epochs=1, limit_train_batches=1)
    first = dict(sc.results)
    fit(tmp_path / "b", model, [sc], max_epochs=1, limit_train_batches=1)
    assert sc.done and sc.results == first  # documented: done is state, the checks do not rerun


# ---------------------------------------------------------------- RNGState / Preemption
class Dropping(TinyClassifier):
    """TinyClassifier has dropout: every step draws from the RNG."""


class StatefulBlobs(BlobsDataModule):
    """The train loader is torchdata's StatefulDataLoader: Lightning saves its position (mid-epoch resume)."""

    def train_dataloader(self) -> Any:
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(self.train_set, batch_size=self.batch_size)


def _run(root: Path, callbacks: list[Callback], max_epochs: int, ckpt: str | None = None, batches: int = 4,
         **kw: Any) -> StepRecorder:
    rec = StepRecorder()
    fit(root, Dropping, [RNGState(), rec, *callbacks], datamodule=StatefulBlobs(n=256), max_epochs=max_epochs,
        limit_train_batches=batches, ckpt_path=ckpt, **kw)
    return rec


@cell("RNGState", "accumulation")
def test_rng_state_resume_with_accumulation_equals_uninterrupted(tmp_path: Path) -> None:
    ref = _run(tmp_path / "ref", [], 3, accumulate_grad_batches=2)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    _run(tmp_path / "run", [ck], 2, enable_checkpointing=True, accumulate_grad_batches=2)
    resumed = _run(tmp_path / "run", [], 3, ckpt=str(tmp_path / "ck" / "last.ckpt"), accumulate_grad_batches=2)
    for a, b in zip(resumed.params, ref.params[-len(resumed.params):], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@cell("RNGState", "load_other_args")
def test_rng_state_loads_into_other_arguments() -> None:
    src, dst = RNGState(include_cuda=True), RNGState(include_cuda=False)
    state = src.state_dict()
    expected = torch.rand(3)  # what the next draw after the capture gives
    dst.load_state_dict(state)
    torch.rand(5)  # move the RNG on
    assert dst._pending is not None
    restore_rng_states(dst._pending)  # what on_train_start does with it
    assert torch.equal(torch.rand(3), expected)


class SignalAt(Callback):
    """Delivers SIGTERM to this process at the end of training batch ``batch`` (before Preemption looks)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch:
            signal.raise_signal(signal.SIGTERM)


@pytest.mark.parametrize("batch", [1, 2])
@cell("Preemption", "accumulation")
def test_preemption_mid_window_saves_at_the_window_end(tmp_path: Path, batch: int) -> None:
    """SIGTERM after micro-batch ``batch`` of windows of 2 (batch 2: inside a window): the checkpoint waits for the
    window's optimizer step, and resuming from it equals the uninterrupted run (regression: it used to save inside
    the window and lose the accumulated gradient)."""
    kw: dict[str, Any] = dict(accumulate_grad_batches=2, batches=6)
    ref = _run(tmp_path / "ref", [], 2, **kw)
    pre = Preemption(dirpath=str(tmp_path / "pre"))
    with pytest.raises(SIGTERMException):
        _run(tmp_path / "run", [SignalAt(batch), pre], 2, **kw)
    assert torch.load(pre.saved_path, weights_only=True)["global_step"] == (batch + 2) // 2  # type: ignore[arg-type]
    resumed = _run(tmp_path / "run", [], 2, ckpt=pre.saved_path, **kw)
    assert resumed.params, "nothing left to train"
    for a, b in zip(resumed.params, ref.params[-len(resumed.params):], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@cell("Preemption", "iterable")
def test_preemption_at_the_last_batch_of_an_epoch_resumes_the_next_epoch(tmp_path: Path) -> None:
    ref = _run(tmp_path / "ref", [], 2)
    pre = Preemption(dirpath=str(tmp_path / "pre"))
    with pytest.raises(SIGTERMException):
        _run(tmp_path / "run", [SignalAt(3), pre], 2)
    resumed = _run(tmp_path / "run", [], 2, ckpt=pre.saved_path)
    assert len(resumed.params) == 4
    for a, b in zip(resumed.params, ref.params[-4:], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@cell("Preemption", "manual")
def test_preemption_manual_optimization_saves_and_resumes(tmp_path: Path) -> None:
    pre = Preemption(dirpath=str(tmp_path / "pre"))
    pl.seed_everything(0)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, ManualClassifier, [RNGState(), SignalAt(1), pre], max_epochs=2, limit_train_batches=4)
    ckpt = torch.load(pre.saved_path, weights_only=True)  # type: ignore[arg-type]
    assert ckpt["global_step"] == 2
