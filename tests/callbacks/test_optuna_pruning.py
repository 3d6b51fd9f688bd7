"""OptunaPruning: reports the monitor each epoch to the trial, raises TrialPruned when the pruner says so (and
lit_tricks.run records status pruned); without a trial it does nothing."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.timeout(120)
def test_reports_each_epoch_and_stops_a_pruned_trial(tmp_path: Path) -> None:
    study, trial = new_trial(step=1)
    trainer = tiny_trainer(tmp_path, max_epochs=4, callbacks=[OptunaPruning(monitor="val/loss", trial=trial)])
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [0, 1]  # one report per epoch, then stopped
    assert frozen.intermediate_values[1] == pytest.approx(float(trainer.callback_metrics["val/loss"]))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


@pytest.mark.timeout(120)
def test_without_a_trial_it_does_nothing(tmp_path: Path) -> None:
    callback = OptunaPruning(monitor="val/loss")
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule())
    assert callback.trial is None and trainer.current_epoch == 2


@pytest.mark.timeout(180)
def test_run_records_a_pruned_job_as_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, trial = new_trial(step=0)
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
    assert list(study.trials[0].intermediate_values) == [0]
