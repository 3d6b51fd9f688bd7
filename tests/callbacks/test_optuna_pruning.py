"""OptunaPruning: reports the monitor each epoch to the trial at step = epochs completed (the pruners' resource),
raises TrialPruned when the pruner says so (and lit_tricks.run records status pruned); without a trial it does
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_tricks.callbacks.optuna_pruning import OptunaPruning
from lit_tricks.run import train
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

CONF = Path(__file__).resolve().parents[2] / "conf"


class PruneFromStep(optuna.pruners.BasePruner):
    """Prunes every trial once it has reported ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def new_trial(step: int = 1) -> tuple[optuna.Study, optuna.Trial]:
    study = optuna.create_study(pruner=PruneFromStep(step))
    return study, study.ask()


class EpochValues(pl.Callback):
    """The monitored value after each epoch's validation (an independent record of what was reported)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val/loss"]))


@pytest.mark.timeout(120)
def test_reports_each_epoch_and_stops_a_pruned_trial(tmp_path: Path) -> None:
    study, trial = new_trial(step=2)
    seen = EpochValues()
    trainer = tiny_trainer(tmp_path, max_epochs=4, callbacks=[seen, OptunaPruning(monitor="val/loss", trial=trial)])
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):  # 0-based epoch 1: the second
        trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: seen.values[0], 2: seen.values[1]}  # step = epochs completed
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


@pytest.mark.timeout(120)
def test_successive_halving_decides_after_1_and_3_epochs(tmp_path: Path) -> None:
    # Optuna's own pruner is the oracle: min_resource=1, reduction_factor=3 has rungs at steps 1, 3, 9, and records
    # the value with which a trial completed rung k in its system attrs. Reporting the 0-based epoch would put the
    # rungs after 2, 4, 10 epochs (after 3 epochs only rung 0 done, with the second epoch's value).
    study = optuna.create_study(pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    trial = study.ask()
    seen = EpochValues()
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[seen, OptunaPruning(monitor="val/loss", trial=trial)])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    rungs = {k: v for k, v in study.trials[0].system_attrs.items() if k.startswith("completed_rung_")}
    assert rungs == {"completed_rung_0": seen.values[0], "completed_rung_1": seen.values[2]}


@pytest.mark.timeout(120)
def test_without_a_trial_it_does_nothing(tmp_path: Path) -> None:
    callback = OptunaPruning(monitor="val/loss")
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert callback.trial is None and trainer.current_epoch == 2


@pytest.mark.timeout(180)
def test_run_records_a_pruned_job_as_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, trial = new_trial(step=1)
    monkeypatch.setattr("lit_tricks.optuna_job.current_trial", lambda: trial)  # as inside a lit_optuna sweep
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "callbacks=optuna_pruning", "trainer.max_epochs=3", "logger=none", "test=false",
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data"])
    with pytest.raises(optuna.TrialPruned):
        train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "pruned" and record["error"].startswith("TrialPruned: pruned at epoch 0")
    assert list(study.trials[0].intermediate_values) == [1]  # after the first epoch
    assert record["pruned_at"]["epoch"] == 0
