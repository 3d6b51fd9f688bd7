"""What a run's record says it got, and from which file: loading the named file gives the named number (or the
record names no file); a NaN objective is a failure; a resumed finished run keeps its numbers; a pruned run says
where. Each run is a 1-epoch, 2-batch run of the default recipe in this process."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import pytest
import torch
from omegaconf import open_dict

from lit_tricks.provenance import is_evaluation_metric, load_run_module
from lit_tricks.records import read_record, validate_record
from lit_tricks.run import train
from tests.test_run_records import QUICK, compose_cfg

QUICK_CSV = [q for q in QUICK if q != "logger=none"]  # with a logger, as by default


def evaluate(run: Path, metric: str, stage: str) -> dict[str, float]:
    """Load the file the record names for ``metric`` into a fresh module; validate or test it (no callbacks)."""
    module, dm = load_run_module(run, metric)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=2, limit_test_batches=2)
    run_stage = trainer.validate if stage == "val" else trainer.test
    run_stage(module, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def close(a: float, b: float) -> bool:
    """Equal up to float32 summation order over a few batches (losses ~1, accuracies exact fractions)."""
    return abs(a - b) <= 16 * torch.finfo(torch.float32).eps * max(1.0, abs(a))


@pytest.mark.timeout(240)
def test_validate_both_names_the_raw_file_for_raw_numbers_and_the_twin_for_ema_ones(tmp_path: Path) -> None:
    train(compose_cfg(tmp_path, "callbacks.ema.validate_both=true", *QUICK_CSV))
    record = read_record(tmp_path / "metrics.json")
    assert validate_record(record) == []
    files, by = record["checkpoints"], record["reproduced_by"]
    assert by["test/acc"] == files["best"] and by["test/acc_ema"] == files["best_ema"] != files["best"]
    assert by["val/acc"] == files["last"] and by["val/acc_ema"] == files["last_ema"]
    assert by["objective"] == files["best"] == record["best_ckpt"]  # val/loss (the monitor) is the raw weights'
    untraceable = [k for k in record["metrics"] if not is_evaluation_metric(k)]
    assert any(k.startswith("train/") for k in untraceable)
    assert all(by[k] is None for k in untraceable)  # no checkpoint reproduces a training statistic
    assert not any(map(is_evaluation_metric, ["train/loss", "grad/norm", "lr-SGD", "epoch"]))
    for name, stage in (("test/acc", "test"), ("test/acc_ema", "test"), ("val/acc_ema", "val")):
        base = name.removesuffix("_ema")
        got = evaluate(tmp_path, name, stage)[base]
        assert close(got, record["metrics"][name]), (name, got, record["metrics"][name])
    assert close(evaluate(tmp_path, "objective", "val")["val/loss"], record["objective"])


@pytest.mark.timeout(240)
def test_without_ema_twins_the_ema_numbers_name_no_file(tmp_path: Path) -> None:
    train(compose_cfg(tmp_path, "callbacks.ema.save_ema_checkpoint=false", *QUICK))
    record = read_record(tmp_path / "metrics.json")
    assert validate_record(record) == [] and record["evaluated_weights"] == "ema"
    assert record["checkpoints"]["best_ema"] is None and record["checkpoints"]["best"]
    assert record["reproduced_by"]["test/acc"] is None and record["reproduced_by"]["objective"] is None
    assert record["best_ckpt"] == ""  # the raw checkpoint does not give the EMA's numbers: none is named
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_run_module(tmp_path)


@pytest.mark.timeout(240)
def test_a_monitor_that_is_nan_every_epoch_fails_the_run(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, "optimizer.lr=1e30", "~callbacks.nan_guard", "~callbacks.clipping", *QUICK)
    with pytest.raises(FloatingPointError, match=r"monitor='val/loss' is nan at every validation"):
        train(cfg)
    record = read_record(tmp_path / "metrics.json")
    assert record["status"] == "failed" and record["objective"] is None and validate_record(record) == []


@pytest.mark.timeout(240)
def test_resume_auto_of_a_finished_run_keeps_every_number(tmp_path: Path) -> None:
    first = train(compose_cfg(tmp_path, *QUICK_CSV))
    before = read_record(tmp_path / "metrics.json")
    again = train(compose_cfg(tmp_path, "resume=auto", *QUICK_CSV))
    after = read_record(tmp_path / "metrics.json")
    assert again == first and after["resumed_from"] and validate_record(after) == []
    kept = [k for k in before["metrics"] if k.startswith(("val/", "train/"))]
    assert kept and {k: after["metrics"].get(k) for k in kept} == {k: before["metrics"][k] for k in kept}


class _Prune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


@pytest.mark.timeout(240)
def test_a_pruned_run_records_where_it_was_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = optuna.create_study(pruner=_Prune()).ask()
    monkeypatch.setattr("lit_tricks.optuna_job.current_trial", lambda: trial)  # as inside a lit_optuna sweep
    cfg = compose_cfg(tmp_path, "callbacks=[default,optuna_pruning]", *QUICK)
    with pytest.raises(optuna.TrialPruned):
        train(cfg)
    record = read_record(tmp_path / "metrics.json")
    assert record["status"] == "pruned" and validate_record(record) == []
    at: dict[str, Any] = record["pruned_at"]
    assert at["epoch"] == 0 and at["step"] == 2 and math.isfinite(at["value"])
    assert at["value"] == trial.study.trials[0].intermediate_values[max(trial.study.trials[0].intermediate_values)]


@pytest.mark.timeout(240)
def test_asha_decides_after_1_3_9_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    trial = study.ask()
    monkeypatch.setattr("lit_tricks.optuna_job.current_trial", lambda: trial)
    cfg = compose_cfg(tmp_path, "callbacks=[default,optuna_pruning]", *QUICK)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 3
    train(cfg)
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3]  # the resource after each epoch: epochs done
    rungs = sorted(k for k in study.trials[0].system_attrs if k.startswith("completed_rung_"))
    assert rungs == ["completed_rung_0", "completed_rung_1"]  # decided after 1 and 3 epochs (the next: 9)


@pytest.mark.timeout(240)
def test_the_docs_reload_snippet_gives_the_recorded_number(tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "results_and_records.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "load_run_module" in b)
    train(compose_cfg(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=none"))
    scope: dict[str, Any] = {}
    exec(re.sub(r'run_dir = ".*?"', f"run_dir = {str(tmp_path)!r}", block), scope)  # full val and test sets
    record = read_record(tmp_path / "metrics.json")
    assert close(float(scope["trainer"].callback_metrics["test/acc"]), record["metrics"]["test/acc"])
