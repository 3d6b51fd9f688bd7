"""Without a logger, TrickModule's training loss and GradientClipping's norm log only on the steps whose value is
read (every ``log_every_n_steps``, the epochs' and the fit's last, a step a checkpoint saves and names itself after,
a step the fit stops at or a validation follows); the metrics a fit ends with (and what a checkpoint sees) equal
Lightning's every-step ``self.log`` (the oracle: TrickModule logging on every step, GradientClipping with
``step_value_read`` always true)."""

from __future__ import annotations

import copy
import functools
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from torch import nn

from lit_tricks import callbacks as ours_callbacks
from lit_tricks.callbacks import GradientClipping, RNGState
from lit_tricks.data.digits import DigitsDataModule
from lit_tricks.modules import TrickModule
from tests.helpers.tiny import tiny_trainer
from tests.modules.test_train_loss_logging import EPS, EveryStep, close


def batch_number(trainer: pl.Trainer) -> int:
    """The training batch running now, counted from 1 over the whole fit."""
    return trainer.fit_loop.epoch_loop.total_batch_idx + 1


class StopAt(Callback):
    """Sets ``should_stop`` in ``hook`` at batch ``at`` (what EarlyStopping after a mid-epoch validation, NaNGuard or
    a user's callback does)."""

    def __init__(self, at: int, hook: str = "on_train_batch_end") -> None:
        self.at, self.hook = at, hook

    def _stop(self, trainer: pl.Trainer, hook: str) -> None:
        if hook == self.hook and batch_number(trainer) >= self.at:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop(trainer, "on_train_batch_end")

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop(trainer, "on_before_optimizer_step")

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop(trainer, "on_validation_end")


class Poison(Callback):
    """Makes a gradient infinite after the backward of batch ``at`` (NaNGuard(policy="stop") then stops there)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if batch_number(trainer) == self.at:
            grad = next(pl_module.parameters()).grad
            assert grad is not None
            grad.view(-1)[0] = float("inf")


class StopInTrainingStep(pl.LightningModule):
    """Sets ``should_stop`` in ``training_step`` at batch 4, after the loss is logged."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.trainer.should_stop = batch_number(self.trainer) >= 4
        return out


class StopInBatchEnd(pl.LightningModule):
    """Sets ``should_stop`` in the LightningModule's ``on_train_batch_end`` (after every callback's) at batch 4."""

    def on_train_batch_end(self, *args: Any) -> None:
        super().on_train_batch_end(*args)
        self.trainer.should_stop = batch_number(self.trainer) >= 4


class LogsInTrainingStep(pl.LightningModule):
    """Logs a value of its own in ``training_step``, after the loss (on every step)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("other/step", float(batch_number(self.trainer)))
        return out


class LogsOwnValues(Callback):
    """Logs values of its own in ``on_before_optimizer_step`` and ``on_train_batch_end`` (on every step)."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        pl_module.log("other/optimizer_step", float(batch_number(trainer)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        pl_module.log("other/batch_end", float(batch_number(trainer)))


class Plain(StopInBatchEnd):
    """Not a TrickModule: a linear classifier logging its loss every step, stopping in ``on_train_batch_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trick_module(oracle: bool, mixin: type[pl.LightningModule] | None = None) -> pl.LightningModule:
    base = EveryStep if oracle else TrickModule
    cls = base if mixin is None else type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})
    return cls(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})


def fit(oracle: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[Callback] | None = None, *,
        before: list[Callback] | None = None, module: Callable[[bool], pl.LightningModule] = trick_module,
        val_fraction: float = 0.0, ckpt_path: str | None = None, **trainer_kwargs: Any) -> pl.Trainer:
    """A fit on digits (7 batches an epoch, the last of 58; 6 with ``val_fraction=0.1``), GradientClipping between
    the callbacks ``before`` and ``extra``."""
    with monkeypatch.context() as patch:
        if oracle:
            patch.setattr("lit_tricks.callbacks.clipping.step_value_read", lambda *a, **k: True)
        pl.seed_everything(0)
        dm = DigitsDataModule(batch_size=200, val_fraction=val_fraction)
        kwargs: dict[str, Any] = {"max_epochs": 2, "log_every_n_steps": 3, "enable_checkpointing": False,
                                  "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
                                  **trainer_kwargs}
        callbacks = [*(before or []), GradientClipping(max_norm=0.5), *(extra or [])]
        trainer = tiny_trainer(tmp_path, callbacks=callbacks, **kwargs)
        trainer.fit(module(oracle), datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def assert_same_end(ours: pl.Trainer, ref: pl.Trainer) -> None:
    assert ours.global_step == ref.global_step
    for attr in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
        mine, theirs = getattr(ours, attr), getattr(ref, attr)
        assert sorted(mine) == sorted(theirs), attr
        assert all(close(mine[k], theirs[k]) for k in theirs), (attr, dict(mine), dict(theirs))


@pytest.mark.parametrize("kwargs", [
    {"accumulate_grad_batches": 3},  # the epoch's last window has one batch
    {"accumulate_grad_batches": 2, "max_steps": 5},  # the fit ends mid-epoch inside the loop's windows
    {"max_steps": 4, "enable_progress_bar": True},
    {"fast_dev_run": 2},
], ids=["accumulate", "accumulate-max-steps", "progress-bar", "fast-dev-run"])
def test_end_metrics_equal_every_step_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              kwargs: dict[str, Any]) -> None:
    assert_same_end(fit(False, tmp_path / "ours", monkeypatch, **kwargs),
                    fit(True, tmp_path / "ref", monkeypatch, **kwargs))


def test_a_second_fit_ends_with_its_own_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = fit(False, tmp_path / "ours", monkeypatch, max_steps=3)
    ref = fit(True, tmp_path / "ref", monkeypatch, max_steps=3)
    for trainer, oracle in ((ours, False), (ref, True)):
        with monkeypatch.context() as patch:
            if oracle:
                patch.setattr("lit_tricks.callbacks.clipping.step_value_read", lambda *a, **k: True)
            trainer.fit_loop.epoch_loop.max_steps = 9
            trainer.fit(trainer.lightning_module, datamodule=trainer.datamodule)
    assert_same_end(ours, ref)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_trainer_fits_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A Trainer after a fit pickles and deep-copies, as Lightning's own does, and the copy's next fit updates its
    own metrics (a closure wrapping the connector's ``on_batch_end`` did neither: the copy's batch end ran the
    original connector's)."""
    copies = []
    for oracle in (False, True):
        trainer = fit(oracle, tmp_path / str(oracle), monkeypatch, max_steps=3)
        twin = pickle.loads(pickle.dumps(trainer)) if how == "pickle" else copy.deepcopy(trainer)
        with monkeypatch.context() as patch:
            if oracle:
                patch.setattr("lit_tricks.callbacks.clipping.step_value_read", lambda *a, **k: True)
            twin.fit_loop.epoch_loop.max_steps = 8
            twin.fit(twin.lightning_module, datamodule=twin.datamodule)
        assert trainer.global_step == 3 and twin.global_step == 8
        copies.append(twin)
    assert_same_end(*copies)


_VAL = {"val_fraction": 0.1, "limit_val_batches": 1, "val_check_interval": 2}  # a validation after batches 2, 4, 6
_STOPS: dict[str, Callable[[], dict[str, Any]]] = {
    "callback-after-clipping-batch-end": lambda: {"extra": [StopAt(4)]},
    "callback-before-clipping-batch-end": lambda: {"before": [StopAt(4)]},
    "callback-after-clipping-optimizer-step": lambda: {"extra": [StopAt(4, "on_before_optimizer_step")]},
    "callback-before-clipping-optimizer-step": lambda: {"before": [StopAt(4, "on_before_optimizer_step")]},
    "module-training-step": lambda: {"module": lambda oracle: trick_module(oracle, StopInTrainingStep)},
    "module-batch-end": lambda: {"module": lambda oracle: trick_module(oracle, StopInBatchEnd)},
    "nan-guard": lambda: {"extra": [Poison(4), ours_callbacks.NaNGuard(policy="stop")]},
    # the first batch of an epoch, where Lightning resets a hook's values at its first log: others' stay
    "first-batch-beside-other-values": lambda: {"extra": [LogsOwnValues(), StopAt(1)],
                                                "module": lambda oracle: trick_module(oracle, LogsInTrainingStep)},
    # the stop comes inside the second window (batches 4-6); its norm is the first window's, a step nobody read
    "accumulation-window": lambda: {"extra": [StopAt(5)], "accumulate_grad_batches": 3},
    "mid-epoch-validation": lambda: {"extra": [StopAt(4, "on_validation_end")], **_VAL},
    "early-stopping": lambda: {"extra": [ours_callbacks.EarlyStopping(monitor="val/loss", stopping_threshold=1e9)],
                               **_VAL},
}


@pytest.mark.parametrize("where", list(_STOPS))
def test_a_stop_requested_mid_epoch_ends_with_that_steps_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                where: str) -> None:
    """``should_stop`` set at batch 4 (mid-epoch, not a step of log_every_n_steps=3; batch 2 for the early stopping,
    5 inside an accumulation window) by a callback before or after GradientClipping, by the LightningModule, by
    NaNGuard or at the end of a validation that follows the batch: the fit ends there, with that step's loss and
    norm, as with Lightning's every-step log."""
    ours = fit(False, tmp_path / "ours", monkeypatch, **_STOPS[where]())
    ref = fit(True, tmp_path / "ref", monkeypatch, **_STOPS[where]())
    assert 0 < ref.global_step < 5  # stopped early, in the first epoch
    assert_same_end(ours, ref)


class EndsLastEpochEarly(pl.LightningModule):
    """Ends epoch ``early`` (default the second, the last) at its 5th batch (``on_train_batch_start`` returns -1: the
    batch is not run)."""

    early = 1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        return -1 if self.current_epoch == self.early and batch_idx == 4 else None


class EndsFirstEpochEarly(EndsLastEpochEarly):
    early = 0


class EpochEndReads(Callback):
    """Reads ``names`` at each epoch end, before the LightningModule's hook (no monitor)."""

    def __init__(self, names: tuple[str, ...] = ("train/loss_step", "grad/grad_norm")) -> None:
        self.names, self.seen = names, []  # type: list[dict[str, float]]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.seen.append({k: float(metrics[k]) for k in self.names if k in metrics})


@pytest.mark.parametrize("mixin", [EndsLastEpochEarly, EndsFirstEpochEarly], ids=["last-epoch", "first-epoch"])
def test_an_epoch_ended_by_on_train_batch_start_ends_with_the_last_run_steps_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixin: type[pl.LightningModule]) -> None:
    """The batch before a -1 from ``on_train_batch_start`` ran its hooks unread (step 11 or 4 is no logging step):
    its held values are logged when the epoch's end is reached, so a reader at the epoch end and the fit's end see
    them as with the every-step log."""
    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[dict[str, float]]]:
        reader = EpochEndReads()
        return fit(oracle, root, monkeypatch, [reader], module=lambda o: trick_module(o, mixin)), reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert ref.global_step == 11  # 7 + 4 batches
    assert len(expected) == 2 and all(sorted(v) == sorted(w) for v, w in zip(seen, expected))
    assert all(close(v[k], w[k]) for v, w in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


class LogsAtEpochEnd(Callback):
    """Logs a value of its own in ``on_train_epoch_end`` (Lightning resets a hook's values at its first log of an
    epoch end: the means logged before must stay)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("other/epoch", float(trainer.current_epoch))


@pytest.mark.parametrize("kwargs", [{}, {"accumulate_grad_batches": 3}], ids=["plain", "accumulate"])
def test_a_callback_reading_at_the_epoch_end_sees_the_epoch_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kwargs: dict[str, Any]) -> None:
    """Lightning calls the callbacks' ``on_train_epoch_end`` before the LightningModule's: a callback reading
    ``train/loss`` there sees the epoch mean (and ``train/loss_epoch``), as with Lightning's ``on_epoch=True`` log:
    TrickModule logs its means when the epoch's end is reached, and a callback logging there after the reader keeps
    them (the fit ends with them)."""
    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[dict[str, float]]]:
        reader = EpochEndReads(("train/loss", "train/loss_epoch", "train/loss_step"))
        return fit(oracle, root, monkeypatch, [reader, LogsAtEpochEnd()], **kwargs), reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) == 2 and all(sorted(w) == ["train/loss", "train/loss_epoch", "train/loss_step"]
                                      for w in expected)
    assert [sorted(v) for v in seen] == [sorted(w) for w in expected]
    assert all(close(v[k], w[k]) for v, w in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


class OwnEpochStart(pl.LightningModule):
    """A user's ``on_train_epoch_start`` without ``super()`` (Lightning's own hook is empty)."""

    def on_train_epoch_start(self) -> None:
        pass


@pytest.mark.parametrize("mixin", [None, OwnEpochStart], ids=["plain", "own-epoch-start-without-super"])
def test_a_second_fit_of_the_same_module_from_epoch_0_means_its_own_epochs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixin: type[pl.LightningModule] | None) -> None:
    """A new Trainer fits the module again from epoch 0 (its epoch 0's means were logged by the first fit): a
    reader at each epoch end and the fit's end see the every-step log's means (``train/loss_epoch`` was missing at
    epoch 0 under an ``on_train_epoch_start`` without ``super()``)."""
    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[dict[str, float]]]:
        pl.seed_everything(0)
        module = trick_module(oracle, mixin)
        fit(oracle, root / "first", monkeypatch, module=lambda o: module, max_epochs=1)
        reader = EpochEndReads(("train/loss", "train/loss_epoch", "train/loss_step"))
        return fit(oracle, root / "second", monkeypatch, [reader], module=lambda o: module), reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) == 2 and all("train/loss_epoch" in w for w in expected)
    assert [sorted(v) for v in seen] == [sorted(w) for w in expected]
    assert all(close(v[k], w[k]) for v, w in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


def test_a_module_resumed_mid_epoch_after_it_logged_that_epoch_goes_on_with_the_checkpoints_sums(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same module object, after a fit that logged epoch 1's means, resumed from step 9 (epoch 1, mid-epoch):
    it ends with the uninterrupted run's ``train/loss_epoch`` (its means were not logged at all before)."""
    def run(root: Path, module: pl.LightningModule, ckpt_path: str | None = None) -> pl.Trainer:
        saver = ModelCheckpoint(root / "ckpt", "{step}", every_n_train_steps=9, save_top_k=-1)
        return fit(False, root, monkeypatch, [saver], module=lambda o: module, enable_checkpointing=True,
                   ckpt_path=ckpt_path)

    module = trick_module(False)
    full = run(tmp_path / "full", module)
    expected = {k: float(v) for k, v in full.callback_metrics.items()}
    resumed = run(tmp_path / "resumed", module, str(tmp_path / "full" / "ckpt" / "step=9.ckpt"))
    assert {k: float(v) for k, v in resumed.callback_metrics.items()} == pytest.approx(expected, rel=8 * EPS)


class OwnEpochEnd(pl.LightningModule):
    """A user's ``on_train_epoch_end`` logging a value of its own, without ``super()``."""

    def on_train_epoch_end(self) -> None:
        self.log("other/epoch", float(self.current_epoch))


class OwnEpochEndThenSuper(pl.LightningModule):
    """A user's ``on_train_epoch_end`` logging a value of its own, then calling ``super()``."""

    def on_train_epoch_end(self) -> None:
        self.log("other/epoch", float(self.current_epoch))
        super().on_train_epoch_end()  # type: ignore[misc]


def _penalty_module(oracle: bool) -> pl.LightningModule:
    from tests.modules.test_train_loss_logging import EveryStepPenalty

    return (EveryStepPenalty if oracle else TrickModule)(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), l1=1e-3,
                                                          optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})


_EPOCH_ENDS: dict[str, Callable[[], dict[str, Any]]] = {
    "validation-at-epoch-end": lambda: {"val_fraction": 0.1, "limit_val_batches": 1},
    "validation-every-2nd-epoch": lambda: {"val_fraction": 0.1, "limit_val_batches": 1, "max_epochs": 3,
                                           "check_val_every_n_epoch": 2},
    "mid-epoch-validation": lambda: dict(_VAL),
    "one-batch-epochs": lambda: {"limit_train_batches": 1, "max_epochs": 3},
    "limited-epochs-accumulating": lambda: {"limit_train_batches": 4, "accumulate_grad_batches": 3},
    "max-steps-mid-epoch": lambda: {"max_steps": 10},
    "callback-logging-before-the-reader": lambda: {"before": [LogsAtEpochEnd()]},
    "module-epoch-end-without-super": lambda: {"module": lambda oracle: trick_module(oracle, OwnEpochEnd)},
    "module-epoch-end-with-super": lambda: {"module": lambda oracle: trick_module(oracle, OwnEpochEndThenSuper)},
    "module-epoch-start-without-super": lambda: {"module": lambda oracle: trick_module(oracle, OwnEpochStart)},
    "l1-penalty-mean": lambda: {"module": _penalty_module},
}


@pytest.mark.parametrize("where", list(_EPOCH_ENDS))
def test_a_reader_at_each_epoch_end_sees_the_every_step_logs_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     where: str) -> None:
    """A callback without a monitor reading at each epoch's end (before the LightningModule's hook) sees what the
    every-step log gives: with validations at or inside the epoch, one-batch or shortened epochs, a fit ended by
    max_steps, another callback logging there first, a subclass's own epoch hooks, the L1 penalty's mean."""
    names = ("train/loss", "train/loss_epoch", "train/loss_step", "train/penalty", "grad/grad_norm", "other/epoch")

    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[dict[str, float]]]:
        reader = EpochEndReads(names)
        kwargs = _EPOCH_ENDS[where]()
        return fit(oracle, root, monkeypatch, [*kwargs.pop("extra", []), reader], **kwargs), reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) >= 2 and all("train/loss_epoch" in w for w in expected)
    assert [sorted(v) for v in seen] == [sorted(w) for w in expected]
    assert all(close(v[k], w[k]) for v, w in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


@pytest.mark.parametrize("monitor", ["train/loss_epoch", "train/loss"])
def test_checkpoints_and_early_stopping_at_the_train_epoch_end_see_the_every_step_logs_means(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monitor: str) -> None:
    """ModelCheckpoint and EarlyStopping monitoring the training loss at the train epoch's end (and a checkpoint
    named after ``train/loss_epoch`` saved there or at the validation's end) equal the every-step log's."""
    from lightning.pytorch.callbacks import EarlyStopping

    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[str], float]:
        named = "{epoch}-{train/loss_epoch:.6f}-{train/loss:.6f}"
        stopper = EarlyStopping(monitor, min_delta=-1e9, mode="max", check_on_train_epoch_end=True)
        checkpoints = [ModelCheckpoint(root / "monitor", "{epoch}-{train/loss_epoch:.6f}", monitor=monitor,
                                       save_top_k=-1, save_on_train_epoch_end=True),
                       ModelCheckpoint(root / "epoch-end", named, save_top_k=-1, save_on_train_epoch_end=True),
                       ModelCheckpoint(root / "validation-end", named, monitor="val/loss", save_top_k=-1)]
        trainer = fit(oracle, root, monkeypatch, [stopper, *checkpoints], enable_checkpointing=True, max_epochs=3,
                      val_fraction=0.1, limit_val_batches=1)
        return trainer, sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt")), float(stopper.best_score)

    (ours, names, best), (ref, expected, expected_best) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) == 9 and names == expected and close(best, expected_best)
    assert_same_end(ours, ref)


def test_a_fit_resumed_from_an_epochs_last_batch_end_ends_as_the_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint at the end of epoch 0's last batch (step 7, before the epoch's end): the resumed fit's epoch ends
    and its end equal the uninterrupted run's (itself equal to the every-step log's)."""
    names = ("train/loss", "train/loss_epoch", "train/loss_step", "grad/grad_norm")

    def run(oracle: bool, root: Path, ckpt_path: str | None = None) -> tuple[pl.Trainer, list[dict[str, float]]]:
        saver = ModelCheckpoint(root / "ckpt", "{step}", every_n_train_steps=7, save_top_k=-1)
        reader = EpochEndReads(names)
        return fit(oracle, root, monkeypatch, [saver, reader], enable_checkpointing=True, max_epochs=3,
                   ckpt_path=ckpt_path), reader.seen

    (full, seen), (ref, _) = run(False, tmp_path / "full"), run(True, tmp_path / "ref")
    assert_same_end(full, ref)
    resumed, seen_resumed = run(False, tmp_path / "resumed", str(tmp_path / "full" / "ckpt" / "step=7.ckpt"))
    assert len(seen_resumed) == 2 and [sorted(v) for v in seen_resumed] == [sorted(w) for w in seen[1:]]
    assert all(close(v[k], w[k]) for v, w in zip(seen_resumed, seen[1:]) for k in w), (seen_resumed, seen)
    assert_same_end(resumed, full)


def test_gradient_clipping_under_any_lightning_module_ends_with_the_stop_steps_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain LightningModule that stops in its own ``on_train_batch_end`` (after every callback's hook)."""
    ours = fit(False, tmp_path / "ours", monkeypatch, module=lambda oracle: Plain())
    ref = fit(True, tmp_path / "ref", monkeypatch, module=lambda oracle: Plain())
    assert ref.global_step == 4
    assert_same_end(ours, ref)


class CountingLogs(StopInBatchEnd, TrickModule):
    """Records at which batch each ``train/`` and ``grad/`` value reaches ``self.log`` (GradientClipping logs
    through the module too)."""

    logged: dict[str, list[int]]

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name.startswith(("train/loss_step", "grad/")):
            self.logged.setdefault(name, []).append(batch_number(self.trainer))
        super().log(name, *args, **kwargs)


def test_unread_steps_are_not_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saving stays: only the read step 3 (log_every_n_steps) and the stop step 4 call ``self.log``."""
    def counting(oracle: bool) -> pl.LightningModule:
        module = CountingLogs(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                              optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
        module.logged = {}
        return module

    trainer = fit(False, tmp_path, monkeypatch, module=counting)
    logged: dict[str, list[int]] = trainer.lightning_module.logged  # type: ignore[assignment]
    assert logged == {name: [3, 4] for name in ("train/loss_step", "grad/grad_norm", "grad/clipped_fraction")}


@pytest.mark.parametrize("monitor", ["grad/grad_norm", "train/loss_step"])
def test_a_checkpoint_every_k_steps_monitoring_a_step_metric_sees_every_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monitor: str) -> None:
    def run(oracle: bool, root: Path) -> dict[str, float]:
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, monitor=monitor, save_top_k=3)
        fit(oracle, root, monkeypatch, [ckpt], enable_checkpointing=True)
        return {Path(k).name: float(v) for k, v in ckpt.best_k_models.items()}

    ours, ref = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert sorted(ours) == sorted(ref) and all(close(ours[k], ref[k]) for k in ref)


_NAMED = "{step}-{train/loss_step:.6f}-{grad/grad_norm:.6f}"  # both step metrics in the file name, no monitor
_NAMING: dict[str, Callable[[Path], tuple[Callback, dict[str, Any]]]] = {
    "every-2-steps": lambda d: (ModelCheckpoint(d, _NAMED, every_n_train_steps=2, save_top_k=-1), {}),
    "every-step-by-time": lambda d: (ModelCheckpoint(d, _NAMED, train_time_interval=timedelta(microseconds=1),
                                                     save_top_k=-1), {}),
    "lit-tricks-every-2-steps": lambda d: (ours_callbacks.ModelCheckpoint(d, _NAMED, every_n_train_steps=2,
                                                                          save_top_k=-1),
                                           {**_VAL, "val_check_interval": 4}),  # step 4's save waits for it
    "at-mid-epoch-validation": lambda d: (ModelCheckpoint(d, _NAMED, monitor="val/loss", save_top_k=-1), _VAL),
}


@pytest.mark.parametrize("naming", list(_NAMING))
def test_a_checkpoint_named_after_step_metrics_holds_that_steps_values(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      naming: str) -> None:
    """Lightning's ModelCheckpoint formats its file name from ``callback_metrics`` when it saves: every k steps, on a
    timer (any step), at a validation's end; lit_tricks' ModelCheckpoint after the validation that follows a step.
    The names equal those the every-step log gives."""
    def run(oracle: bool, root: Path) -> list[str]:
        ckpt, kwargs = _NAMING[naming](root / "ckpt")
        ckpt.auto_insert_metric_name = False  # type: ignore[attr-defined]
        fit(oracle, root, monkeypatch, [ckpt], enable_checkpointing=True, **kwargs)
        return sorted(p.name for p in (root / "ckpt").glob("*.ckpt"))

    ours, ref = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(ref) >= 4 and ours == ref


class Reads(Callback):
    """Reads a metrics dict of the Trainer inside every batch, without a ``monitor`` attribute (a user's logging or
    divergence callback): in ``on_before_optimizer_step`` (after the training step's log) and ``on_train_batch_end``
    (after GradientClipping's)."""

    NAMES = ("train/loss", "train/loss_step", "grad/grad_norm", "grad/clipped_fraction")

    def __init__(self, what: str = "callback_metrics", rank: int | None = None) -> None:
        self.what, self.rank = what, rank
        self.seen: list[tuple[str, int, dict[str, float]]] = []

    def _read(self, trainer: pl.Trainer, hook: str) -> None:
        if self.rank is None or trainer.global_rank == self.rank:
            metrics = getattr(trainer, self.what)
            self.seen.append((hook, batch_number(trainer), {k: float(metrics[k]) for k in self.NAMES if k in metrics}))

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._read(trainer, "on_before_optimizer_step")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._read(trainer, "on_train_batch_end")


@pytest.mark.parametrize("before", [False, True], ids=["after-clipping", "before-clipping"])
@pytest.mark.parametrize("what", ["callback_metrics", "logged_metrics", "progress_bar_metrics"])
def test_a_reader_without_monitor_sees_every_steps_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          what: str, before: bool) -> None:
    """Each read inside a batch (log_every_n_steps=3: most steps unread) returns what the every-step log gives:
    reading a metrics dict logs the held values it holds first."""
    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[tuple[str, int, dict[str, float]]]]:
        reader = Reads(what)
        trainer = fit(oracle, root, monkeypatch, **({"before": [reader]} if before else {"extra": [reader]}))
        return trainer, reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) == 2 * 14 and any(values for _, _, values in expected)
    assert [(h, b, sorted(v)) for h, b, v in seen] == [(h, b, sorted(v)) for h, b, v in expected]
    assert all(close(v[k], w[k]) for (_, _, v), (_, _, w) in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


@pytest.mark.parametrize("bar", ["reader", "tqdm"])
def test_progress_bar_reads_log_no_held_value_it_does_not_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              bar: str) -> None:
    """A progress bar reads ``progress_bar_metrics`` every batch (a reader of it; Lightning's TQDM bar): the norms
    (no ``prog_bar``) stay unlogged on unread steps; the loss (``prog_bar=True``) is logged at every read (shown)."""
    def counting(oracle: bool) -> pl.LightningModule:
        module = CountingLogs(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                              optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
        module.logged = {}
        return module

    reader = Reads("progress_bar_metrics") if bar == "reader" else TQDMProgressBar()
    trainer = fit(False, tmp_path, monkeypatch, [reader], module=counting, enable_progress_bar=bar == "tqdm")
    logged: dict[str, list[int]] = trainer.lightning_module.logged  # type: ignore[assignment]
    assert logged == {"train/loss_step": [1, 2, 3, 4], "grad/grad_norm": [3, 4], "grad/clipped_fraction": [3, 4]}


class ReadsInEveryHook(Callback):
    """Reads ``callback_metrics`` in every hook of a training batch and of a validation inside the fit."""

    HOOKS = ("on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
             "on_before_optimizer_step", "on_train_batch_end", "on_validation_batch_end", "on_validation_end")

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, dict[str, float]]] = []
        for hook in self.HOOKS:
            setattr(self, hook, functools.partial(self._read, hook))

    def _read(self, hook: str, trainer: pl.Trainer, *args: Any) -> None:
        metrics = trainer.callback_metrics
        self.seen.append((hook, batch_number(trainer), {k: float(metrics[k]) for k in Reads.NAMES if k in metrics}))


class Manual(pl.LightningModule):
    """A plain LightningModule in manual optimization (one ``optimizer.step()`` in each ``training_step``)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train/loss", loss)
        optimizer: Any = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("kwargs", [
    {"accumulate_grad_batches": 3},  # reads inside a window: the norm is the previous window's
    _VAL,  # reads inside the validations that follow batches 2, 4, 6 (nothing is logged there)
    {"module": lambda oracle: Manual()},
], ids=["accumulate", "mid-epoch-validation", "manual-optimization"])
def test_a_reader_in_any_hook_of_a_batch_sees_every_steps_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 kwargs: dict[str, Any]) -> None:
    def run(oracle: bool, root: Path) -> tuple[pl.Trainer, list[tuple[str, int, dict[str, float]]]]:
        reader = ReadsInEveryHook()
        return fit(oracle, root, monkeypatch, [reader], **kwargs), reader.seen

    (ours, seen), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    assert len(expected) > 4 * 14 and "grad/grad_norm" in expected[-1][2]
    assert [(h, b, sorted(v)) for h, b, v in seen] == [(h, b, sorted(v)) for h, b, v in expected]
    assert all(close(v[k], w[k]) for (_, _, v), (_, _, w) in zip(seen, expected) for k in w), (seen, expected)
    assert_same_end(ours, ref)


class StepPlateau(pl.LightningModule):
    """A ReduceLROnPlateau stepped every batch on ``train/loss`` (Lightning reads ``callback_metrics`` after the
    batch end; no callback monitors it); records the learning rate of every batch."""

    lrs: list[float]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, threshold=0.0)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "interval": "step", "monitor": "train/loss"}}

    def on_train_batch_start(self, *args: Any) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("ranks", [1, 2], ids=["one-process", "two-ranks-emulated"])
def test_a_step_plateau_schedule_on_the_training_loss_sees_every_steps_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranks: int) -> None:
    """Lightning steps the schedule on ``callback_metrics["train/loss"]`` after every batch end. Under two ranks
    (``world_size`` 2 in one process, where a ``sync_dist`` log stays local) a read logs no held ``sync_dist``
    value: the schedule's monitor makes the loss read at every step (it was missing at step 1 and failed the fit)."""
    if ranks > 1:
        monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: ranks))

    def module(oracle: bool) -> pl.LightningModule:
        plateau = trick_module(oracle, StepPlateau)
        plateau.lrs = []  # type: ignore[attr-defined]
        return plateau

    ours, ref = fit(False, tmp_path / "ours", monkeypatch, module=module), fit(True, tmp_path / "ref", monkeypatch,
                                                                                 module=module)
    lrs: list[float] = ref.lightning_module.lrs  # type: ignore[assignment]
    assert ours.lightning_module.lrs == lrs  # on the same steps (one process: the schedule decays 7 times)
    assert len(set(lrs)) > 2 or ranks > 1  # (two ranks: each sees half the batches, a falling loss: no decay)
    assert_same_end(ours, ref)


def test_a_checkpoint_at_an_unread_step_keeps_and_resumes_to_every_steps_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RNGState keeps the metrics callbacks read (``callback_metrics``, ``logged_metrics``) in each checkpoint; one
    saved every 2 steps (not named after a metric: steps 2, 4 read by no one else) holds the every-step log's, and
    a fit resumed from step 4 ends as the uninterrupted one."""
    def run(oracle: bool, root: Path, ckpt_path: str | None = None) -> tuple[pl.Trainer, dict[int, Any]]:
        saver = ModelCheckpoint(root / "ckpt", "{step}", every_n_train_steps=2, save_top_k=-1)
        trainer = fit(oracle, root, monkeypatch, [RNGState(), saver], enable_checkpointing=True, max_steps=6,
                      ckpt_path=ckpt_path)
        kept = {step: torch.load(root / "ckpt" / f"step={step}.ckpt", weights_only=True)["callbacks"]
                for step in (2, 4)} if ckpt_path is None else {}
        return trainer, {step: next(v for k, v in states.items() if k.startswith("RNGState"))["per_rank"][0]
                         ["loop_values"]["metrics"] for step, states in kept.items()}

    (ours, saved), (ref, expected) = run(False, tmp_path / "ours"), run(True, tmp_path / "ref")
    for step in (2, 4):
        for kind in ("callback", "logged"):
            mine, theirs = saved[step][kind], expected[step][kind]
            assert sorted(mine) == sorted(theirs) and "grad/grad_norm" in theirs, (step, kind)
            assert all(close(mine[k], theirs[k]) for k in theirs), (step, kind, mine, theirs)
    resumed, _ = run(False, tmp_path / "resumed", str(tmp_path / "ours" / "ckpt" / "step=4.ckpt"))
    assert_same_end(resumed, ours)
    assert_same_end(ours, ref)


class OwnConnector(_LoggerConnector):
    """A user's logger connector: Lightning's, subclassed (counts its ``callback_metrics`` reads)."""

    reads = 0

    @property
    def callback_metrics(self) -> Any:
        self.reads += 1
        return super().callback_metrics


class InstallsOwnConnector(Callback):
    def setup(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        connector = OwnConnector(trainer)
        connector.__dict__.update(trainer._logger_connector.__dict__)
        trainer._logger_connector = connector


def test_a_logger_connector_subclass_keeps_its_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's subclass of the logger connector is not replaced (its reads stay its own); a stop at the unread
    batch 4 still ends with that step's values."""
    def run(oracle: bool) -> pl.Trainer:
        return fit(oracle, tmp_path / str(oracle), monkeypatch, [StopAt(4), Reads()], before=[InstallsOwnConnector()])

    ours, ref = run(False), run(True)
    connector: Any = ours._logger_connector
    assert type(connector) is OwnConnector and connector.reads >= 2 * 4
    assert_same_end(ours, ref)


class SaveEnd(Callback):
    """Saves, on each rank at fit end, the metrics the fit ends with."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ends = {attr: {k: torch.as_tensor(v).detach().cpu().clone() for k, v in getattr(trainer, attr).items()}
                for attr in ("callback_metrics", "logged_metrics", "progress_bar_metrics")}
        torch.save({"step": trainer.global_step, **ends}, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_a_stop_under_ddp_logs_the_held_values_on_every_rank(tmp_path: Path) -> None:
    """Two ranks (gloo, 60 s timeout): the held loss (``sync_dist``: a collective) and norm of the stop step are
    logged on both ranks, and each ends as a run that reads every step (``log_every_n_steps=1``). Rank 0 alone
    reads ``callback_metrics`` at every batch: that logs no held ``sync_dist`` value (a collective on one rank)."""
    from lit_tricks.trainers.strategies import ddp_strategy

    def run(out: Path, every: int) -> list[dict[str, Any]]:
        out.mkdir()
        trainer = tiny_trainer(out, devices=2, strategy=ddp_strategy(start_method="spawn", timeout_s=60.0),
                               max_epochs=2, log_every_n_steps=every, limit_val_batches=0, enable_checkpointing=False,
                               callbacks=[GradientClipping(max_norm=0.5), StopAt(3), SaveEnd(out),
                                          Reads(rank=0)])  # rank 0 alone reads: nothing may wait for rank 1
        pl.seed_everything(0)
        trainer.fit(trick_module(False), datamodule=DigitsDataModule(batch_size=200, val_fraction=0.0))
        return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]

    ours, ref = run(tmp_path / "ours", 5), run(tmp_path / "ref", 1)
    for mine, theirs in zip(ours, ref):
        assert mine["step"] == theirs["step"] == 3
        # each rank's own count (ddp_spawn once shared the counter's memory between the ranks: 1.67 or 2)
        assert 0 <= float(mine["callback_metrics"]["grad/clipped_fraction"]) <= 1
        for attr in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
            assert sorted(mine[attr]) == sorted(theirs[attr]) and "grad/grad_norm" in theirs["callback_metrics"]
            assert all(close(mine[attr][k], theirs[attr][k]) for k in theirs[attr]), attr
