"""scripts/train.py end to end: a real subprocess run, bad input, every experiment under fast_dev_run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_tricks.config_bases import cached_bases
from lit_tricks.run import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def run_script(tmp_path: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    # a warm cache of the base configs: a miss would build them while Hydra composes, importing Lightning early
    cached_bases(tmp_path / "bases")
    env = {**os.environ, "LIT_TRICKS_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0",
           "LIT_TRICKS_CACHE_DIR": str(tmp_path / "bases")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout,
    )


#: Warnings lit_tricks used to cause in a default run (each must stay silenced).
OUR_WARNINGS = ("limit_train_batches=1.0", "limit_val_batches=1.0", "limit_test_batches=1.0", "set_vital",
                'ckpt_path="best")` is called with Trainer configured with multiple',
                "Please add the following callbacks",
                "alembic", "sync_dist")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_one_epoch_run_writes_metrics_checkpoint_config_and_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_script(tmp_path, "trainer.max_epochs=1", "seed=3", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [w for w in OUR_WARNINGS if w in proc.stderr + proc.stdout]
    assert not noise, f"a default run warns about {noise}"
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and record["monitor"] == "val/loss" and record["schema_version"] == 1
    assert 0.0 < record["objective"] < 3.0
    assert record["objective"] == record["metrics"]["val/loss"]  # one epoch: the best checkpoint is the last
    assert "test/acc" in record["metrics"]
    best = Path(record["best_ckpt"])
    assert best.is_file() and best.name.startswith("ema-")  # the EMA was evaluated
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config_resolved.yaml").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert list(run.glob("csv/version_*/metrics.csv")) and list(run.glob("csv/version_*/hparams.yaml"))
    assert "Trainer.fit` stopped" in (run / "train.log").read_text()  # Lightning's lines reach train.log
    # ... and stay plain on the console, once (lit_tricks.cli.train imports Lightning as before Hydra's logging)
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in proc.stderr.splitlines()
    assert "][lightning." not in proc.stdout + proc.stderr and "INFO: " not in proc.stderr
    # the summary names val/test accuracy, the checkpoint and the run directory
    assert "val/acc=" in proc.stdout and "test/acc=" in proc.stdout
    assert f"checkpoint {record['best_ckpt']}" in proc.stdout and f"run directory {run}" in proc.stdout
    # every checkpoint of the run loads without unpickling code
    ckpt = torch.load(record["best_ckpt"], weights_only=True, map_location="cpu")
    assert "state_dict" in ckpt
    # resume=auto continues the same CSV version: the curves see both epochs
    proc = run_script(tmp_path, "trainer.max_epochs=2", "seed=3", f"hydra.run.dir={run}", "resume=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = sorted(run.glob("csv/version_*"))
    assert [v.name for v in versions] == ["version_0"]
    import csv

    with (versions[0] / "metrics.csv").open() as fh:
        epochs = {int(float(row["epoch"])) for row in csv.DictReader(fh) if row.get("val/loss")}
    assert epochs == {0, 1}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_values_fail_before_training_with_one_short_message(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "optimizer.lr=-1", "data.batch_size=0", "module.dropout=1.5")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("lit_tricks: invalid config (3 problems)")
    assert any("optimizer.lr=-1" in ln for ln in lines)
    assert any("data.batch_size=0" in ln for ln in lines)
    assert any("module.dropout=1.5" in ln for ln in lines)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not list(
        (tmp_path / "logs" / "train" / "runs").glob("*/checkpoints")
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_unknown_group_option_lists_the_valid_ones(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "optimizer=sgdd")
    assert proc.returncode != 0
    assert "Could not find 'optimizer/sgdd'" in proc.stderr and "sgd" in proc.stderr


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.timeout(180)
def test_experiment_runs_with_fast_dev_run(tmp_path: Path, experiment: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"experiment={experiment}", "trainer.fast_dev_run=true", f"paths.output_dir={tmp_path}",
            f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data", "logger=none",
        ])
    objective = train(cfg)
    assert math.isfinite(objective)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "ok" and "test/acc" in record["metrics"]


@pytest.mark.timeout(180)
def test_cv_runs_every_fold_in_one_job_and_returns_the_mean(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "cv=true", "data.num_folds=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", "logger=none",
        ])
    objective = train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    folds = [f["metrics"]["val/loss"] for f in record["folds"]]
    assert len(folds) == 2 and folds[0] != folds[1]  # different validation folds
    assert objective == pytest.approx(sum(f["objective"] for f in record["folds"]) / 2)
    assert record["objective_source"] == "cv_mean"
    assert record["metrics"]["val/loss_std"] == pytest.approx(abs(folds[0] - folds[1]) / 2)
    assert (tmp_path / "fold0" / "checkpoints").is_dir() and (tmp_path / "fold1" / "checkpoints").is_dir()
