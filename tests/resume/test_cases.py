"""The ways resume broke (issue 23), one test each, against the uninterrupted run as the oracle.

(1) a Schedule sized by the Trainer and a mid-epoch resume; (2) EMAWeights' BatchNorm recalibration at a mid-epoch
validation; (3) Preemption at an epoch's last batch; (4) the epoch start Lightning skips after a last-batch checkpoint
(BackboneFinetuning, LearningCurves); (5) ``fit(ckpt_path="last")`` with EMA twins and a preemption checkpoint; (6)
the documented CLI composition with a SIGTERM mid-epoch; (7) EarlyStopping restoring the weights of the check that
stopped at ``stopping_threshold``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from lit_tricks.callbacks import EarlyStopping, EMAWeights, ModelCheckpoint, Preemption
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer
from tests.matrix.models import ScriptedMetric
from tests.resume.harness import (
    BATCHES,
    Fault,
    assert_same,
    differences,
    interrupted_run,
    merged_records,
    outcome,
    resume_steps,
    run,
)


def _reference(recipe: str, root: Path, extra: tuple[str, ...] = ()) -> Path:
    run_dir = root / "ref" / "run"
    assert run(recipe, run_dir, extra=extra) == "done"
    return run_dir


@pytest.mark.timeout(240)
def test_1_default_recipe_resumed_mid_epoch_trains_on_the_same_batches(tmp_path: Path) -> None:
    """The default recipe (its warm-up + cosine Schedule reads ``estimated_stepping_batches`` in
    ``configure_optimizers``, which builds the train loader before the checkpoint's data position is restored)
    killed mid-epoch and resumed from its per-step ``last.ckpt``: the same sample ids, lr and loss at every step."""
    reference = merged_records(_reference("default", tmp_path))
    resumed = merged_records(interrupted_run("default", tmp_path / "cell", [Fault("kill", "batch", 1, 3)]))
    assert [r["ids"] for r in resumed] == [r["ids"] for r in reference]
    assert resumed == reference


@pytest.mark.timeout(240)
def test_1_without_rng_state_the_data_position_is_still_the_saved_one(tmp_path: Path) -> None:
    """The same with only the per-step ``last.ckpt`` (lit_tricks' ModelCheckpoint) and no RNGState: dropout masks
    differ after the resume (no RNG state is saved), the batches do not."""
    extra = ("callbacks=[last_checkpoint]",)
    reference = merged_records(_reference("default", tmp_path, extra))
    resumed = merged_records(interrupted_run("default", tmp_path / "cell", [Fault("kill", "batch", 1, 3)], extra))
    assert [r["ids"] for r in resumed] == [r["ids"] for r in reference]


#: EMAWeights recalibrating BatchNorm (2 batches) before each evaluation with the EMA, alone with the per-step
#: checkpoint and the RNG states.
RECALIBRATING_EMA = ("callbacks.ema.recalibrate_bn_batches=2",)


@pytest.mark.timeout(240)
def test_2_bn_recalibration_at_a_mid_epoch_validation_leaves_the_data_position(tmp_path: Path) -> None:
    """EMAWeights(recalibrate_bn_batches=2) with validation after batches 2 and 5 of each epoch, killed at batch 4 of
    epoch 1 and resumed from the checkpoint written after the mid-epoch validation: the same sample ids, lr and loss
    at every step, and everything else bit for bit (the recalibration used to iterate the training loader, so that
    checkpoint saved the recalibration's data position and the resumed run replayed a batch)."""
    reference = outcome(_reference("ema", tmp_path, RECALIBRATING_EMA))
    run_dir = interrupted_run("ema", tmp_path / "cell", [Fault("kill", "batch", 1, 4)], RECALIBRATING_EMA)
    assert resume_steps(run_dir) == [BATCHES + 4]  # resumed from the checkpoint after the mid-epoch validation
    resumed = outcome(run_dir)
    assert [r["ids"] for r in resumed["records"]] == [r["ids"] for r in reference["records"]]
    assert_same(resumed, reference, "BN recalibration at a mid-epoch validation, killed after it")


@pytest.mark.timeout(240)
def test_3_preemption_in_an_epochs_last_batch_keeps_that_epochs_end(tmp_path: Path) -> None:
    """SIGTERM during the last batch of epoch 0: the epoch's validation, early-stopping check, ensemble member and
    epoch-end checkpoint happen as in the uninterrupted run (Preemption saves after that validation)."""
    extra = ("callbacks=[last_checkpoint,rng_state,preemption,early_stopping,checkpoint_ensemble,model_checkpoint]",)
    reference = outcome(_reference("early_stopping", tmp_path, extra))
    run_dir = interrupted_run("early_stopping", tmp_path / "cell", [Fault("term", "batch", 0, BATCHES - 1)], extra)
    [path] = (run_dir / "checkpoints").glob("*preempted.ckpt")
    saved = torch.load(path, weights_only=True, map_location="cpu")
    assert saved["global_step"] == BATCHES  # after the epoch's last batch ...
    stopping = next(v for k, v in saved["callbacks"].items() if k.startswith("EarlyStopping"))
    assert torch.isfinite(stopping["best_score"])  # ... and its validation's early-stopping check
    assert_same(outcome(run_dir), reference, "SIGTERM in the last batch")


#: BackboneFinetuning (unfreezing at epoch 1) and LearningCurves, with Lightning's own ModelCheckpoint writing a
#: checkpoint at every batch end, the epoch's last one included.
LIGHTNING_STEP_CHECKPOINTS = (
    "callbacks=[default,backbone_finetuning,learning_curves]", "++callbacks.learning_curves.plot=false",
    "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1",
    "callbacks.last_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
)


@pytest.mark.timeout(240)
def test_4_epoch_start_runs_after_a_last_batch_checkpoint(tmp_path: Path) -> None:
    """Killed during epoch 0's validation, the run resumes from the checkpoint of epoch 0's last batch, which
    Lightning continues with epoch 1 without ``on_train_epoch_start``. The backbone is unfrozen at epoch 1 as in
    the uninterrupted run (same lr groups and losses at every step of epochs 1-2), and the learning curves hold
    epochs 0, 1, 2 once each, epochs 1-2 equal. (Epoch 0's validation itself is lost: Lightning resumes such a
    checkpoint past it, which is why lit_tricks' own checkpoints are never taken there.)"""
    reference = _reference("default", tmp_path, LIGHTNING_STEP_CHECKPOINTS)
    run_dir = interrupted_run("default", tmp_path / "cell", [Fault("kill", "valstart", 0, BATCHES - 1)],
                              LIGHTNING_STEP_CHECKPOINTS)
    expected, resumed = merged_records(reference), merged_records(run_dir)
    assert resumed[BATCHES:] == expected[BATCHES:]
    assert len(resumed[BATCHES]["lr"]) > len(resumed[BATCHES - 1]["lr"])  # the backbone's groups joined at epoch 1

    def curves(path: Path) -> dict[str, Any]:  # written at the last batch: epoch 2's row is still pending
        ckpt = torch.load(path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        return next(v for k, v in ckpt["callbacks"].items() if k.startswith("LearningCurves"))

    ours, theirs = curves(run_dir), curves(reference)
    assert ours["history"]["epoch"] == theirs["history"]["epoch"] == [0.0, 1.0]
    rows = {k: v[1:] for k, v in ours["history"].items()}, {k: v[1:] for k, v in theirs["history"].items()}
    assert not differences(rows[0], rows[1])
    assert not differences(ours["pending"], theirs["pending"])


class _Steps(Callback):
    def __init__(self) -> None:
        self.first: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first = trainer.global_step


def test_5_fit_ckpt_path_last_never_takes_an_ema_twin_and_finds_the_preempted_state(tmp_path: Path) -> None:
    """Lightning's own resume call, ``trainer.fit(ckpt_path="last")``, with ``ModelCheckpoint(save_last=True)`` and
    ``EMAWeights`` (whose weights-only twins are written after each checkpoint), then in a folder where Preemption
    left a newer state."""
    def fit(epochs: int, *extra: Callback, ckpt_path: str | None = None) -> _Steps:
        steps = _Steps()
        callbacks = [EMAWeights(decay=0.9), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), steps, *extra]
        tiny_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, limit_train_batches=4,
                     limit_val_batches=1).fit(TinyClassifier(), datamodule=BlobsDataModule(), ckpt_path=ckpt_path)
        return steps

    fit(1)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert not [n for n in names if n.startswith("last") and n != "last.ckpt"], names  # no last* twin
    assert fit(2, ckpt_path="last").first == 4  # resumed from last.ckpt (4 steps), not from a twin

    class TermAt(Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if trainer.global_step == 9:
                import signal

                signal.raise_signal(signal.SIGTERM)

    with pytest.raises(SystemExit):
        fit(3, Preemption(requeue=False), TermAt())  # saves last-preempted.ckpt at step 10, after last.ckpt (8)
    assert fit(3, ckpt_path="last").first == 10


def test_6_cli_composition_with_sigterm_mid_epoch_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """``callbacks=[default,rng_state,preemption,nan_guard] resume=auto`` as the docs show it (epoch-end checkpoints
    only, validation once an epoch), SIGTERM in the middle of epoch 1, then the same command again."""
    extra = ("callbacks=[default,rng_state,preemption,nan_guard]", "++trainer.val_check_interval=1.0",
             "callbacks.last_checkpoint.every_n_train_steps=null")
    reference = outcome(_reference("default", tmp_path, extra))
    run_dir = interrupted_run("default", tmp_path / "cell", [Fault("term", "batch", 1, 3)], extra)
    assert_same(outcome(run_dir), reference, "CLI composition, SIGTERM mid-epoch")
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["test/acc"] == reference["metrics.json"]["metrics"]["test/acc"]


class _WeightsAtValidation(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_7_early_stopping_at_the_threshold_restores_that_checks_weights(tmp_path: Path) -> None:
    """val/score 1.0, 0.8, 0.5 with ``stopping_threshold=0.6``: training stops at epoch 2, which is the best."""
    stopper = EarlyStopping(monitor="val/score", patience=5, stopping_threshold=0.6, restore_best_weights=True)
    seen = _WeightsAtValidation()
    model = ScriptedMetric([1.0, 0.8, 0.5, 0.4])
    tiny_trainer(tmp_path, max_epochs=6, callbacks=[seen, stopper], limit_train_batches=2, limit_val_batches=1,
                 num_sanity_val_steps=0).fit(model, datamodule=BlobsDataModule())
    assert stopper.stopped_epoch == 2 and len(seen.weights) == 3
    assert stopper.best_epoch == 2 and stopper.best_value == pytest.approx(0.5)
    assert not differences(model.state_dict(), seen.weights[2])
    assert float(stopper.best_score) == float(torch.tensor(0.8))  # Lightning's own best_score: as Lightning keeps it


def test_our_step_checkpoint_is_never_taken_before_a_validation_or_an_epoch_end(tmp_path: Path) -> None:
    """The rule behind (3) and the kill -9 cells: ``lit_tricks.callbacks.ModelCheckpoint(every_n_train_steps=1)``
    writes the step due at a batch a validation follows right after that validation (same step), Lightning's at the
    batch end, which Lightning then resumes past the validation."""
    class Saves(Callback):
        def __init__(self) -> None:
            self.where: list[tuple[str, int]] = []

        def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                               checkpoint: dict[str, Any]) -> None:
            self.where.append(("val" if trainer.validating else "train", trainer.global_step))

    for cls, expected in ((ModelCheckpoint, "val"), (LightningModelCheckpoint, "train")):
        saves = Saves()
        shutil.rmtree(tmp_path / "c", ignore_errors=True)
        tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1, val_check_interval=2,
                     callbacks=[saves, cls(dirpath=tmp_path / "c", every_n_train_steps=1)],
                     ).fit(TinyClassifier(), datamodule=BlobsDataModule())
        assert [s for s in saves.where if s[1] in (2, 4)] == [(expected, 2), (expected, 4)], cls
        assert ("train", 1) in saves.where and ("train", 3) in saves.where


@pytest.mark.timeout(240)
def test_posthoc_ema_killed_inside_a_snapshot_write_leaves_the_snapshots_of_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Issue 27: a ``kill -9`` halfway through writing the snapshot of step 10 (snapshots every 2 steps), resumed
    from step 9's checkpoint: the same snapshot files bit for bit, the same profiles in every checkpoint, and no
    torn temp file left in the snapshot folder (the end-of-run reconstruction is off: the grid runs it)."""
    extra = ("posthoc_ema=null",)
    reference = outcome(_reference("posthoc_ema", tmp_path, extra))
    run_dir = interrupted_run("posthoc_ema", tmp_path / "cell", [Fault("kill", "write", 1, 3)], extra)
    assert resume_steps(run_dir) == [BATCHES + 3]
    resumed = outcome(run_dir)
    snapshots = [k for k in reference["listing"] if "posthoc_ema/" in k]
    assert len(snapshots) == 9 and [k for k in resumed["listing"] if "posthoc_ema/" in k] == snapshots
    assert_same(resumed, reference, "PostHocEMA killed inside a snapshot write")
