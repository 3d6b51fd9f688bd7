"""lit_tricks.run: what is reported is what was saved; a bad job never stops a sweep; bad input is one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lit_tricks.config_checks import ConfigError, SweepConfigError, check_config
from lit_tricks.fault.ema_checkpoint import ema_checkpoint_path
from lit_tricks.records import read_record, validate_record
from lit_tricks.run import train
from lit_tricks.sweeps.report import build_report

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2", "logger=none"]


def compose_cfg(tmp_path: Path, *overrides: str, hydra_config: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"],
                       return_hydra_config=hydra_config)


def test_every_relation_problem_is_named_at_once(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, "optimizer.lr=null", "scheduler.warmup_epochs=100", "trainer.max_epochs=1",
                      "+trainer.gradient_clip_val=1.0", "trainer=ddp_cpu", "trainer.sync_batchnorm=true")
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    problems = info.value.problems
    assert len(problems) == 4, problems
    for needle in ("optimizer.lr=None", "scheduler.warmup_epochs=100", "trainer.gradient_clip_val=1.0",
                   "trainer.sync_batchnorm=True"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert all("\n" not in p for p in problems)
    check_config(compose_cfg(tmp_path, "trainer.max_epochs=1"))  # the default warm-up (2 epochs) in a 1-epoch run


def test_optuna_direction_must_agree_with_monitor_mode(tmp_path: Path) -> None:
    # lit_optuna follows monitor_mode by default (direction: ${monitor_mode}, min/max aliases accepted)
    cfg = compose_cfg(tmp_path, "hparams_search=tpe", "monitor=val/acc", "monitor_mode=max", hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    check_config(cfg)
    cfg = compose_cfg(tmp_path, "hparams_search=tpe", "monitor=val/acc", "monitor_mode=max",
                      "hydra.sweeper.direction=minimize", hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        expected = r"hydra\.sweeper\.direction=minimize: disagrees with monitor_mode=max"
        with pytest.raises(SweepConfigError, match=expected):
            check_config(cfg)
        cfg.monitor_mode = "min"
        check_config(cfg)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


@pytest.mark.timeout(180)
def test_rejections_before_training_name_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"module.norm='group:7': 7 groups must divide the channel counts"):
        train(compose_cfg(tmp_path / "a", "module.norm=group:7", *QUICK))
    assert not (tmp_path / "a" / "metrics.json").exists()  # rejected single run: nothing left
    with pytest.raises(ConfigError) as info:
        train(compose_cfg(tmp_path / "b", "monitor=val/accuracy", *QUICK))
    line = info.value.problems[0]
    assert line.startswith("monitor='val/accuracy': not logged by the module; logged metrics: [")
    assert "'val/acc'" in line
    assert not list((tmp_path / "b").glob("checkpoints/*.ckpt"))  # refused after sanity validation, before step 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("experiment", ["mnist1d_baseline", "mnist1d_tricks"])
def test_a_test_monitor_without_validation_trains_and_is_the_objective(tmp_path: Path, experiment: str) -> None:
    # The MNIST-1D recipes have no validation split and monitor test/acc (final weights). A real (not fast_dev_run)
    # run must pass the monitor check, which once looked for test/acc after the empty sanity pass and refused it.
    train(compose_cfg(tmp_path, f"experiment={experiment}", f"data.data_dir={tmp_path / 'data'}", "logger=none",
                      "trainer.max_epochs=1", "trainer.limit_train_batches=3"))
    record = read_record(tmp_path / "metrics.json")
    assert record["status"] == "ok"
    assert record["objective_source"] == "last_epoch"
    assert record["objective"] == record["metrics"]["test/acc"]


def test_the_monitor_check_is_a_callback_only_where_it_looks() -> None:
    from lit_tricks.run import MonitorCheck, _monitor_check

    assert _monitor_check("test/acc") == []  # checked after trainer.test, not during the fit: no per-step dispatch
    (check,) = _monitor_check("val/loss")
    assert isinstance(check, MonitorCheck) and check.monitor == "val/loss"


@pytest.mark.timeout(180)
def test_a_constructor_that_refuses_its_config_is_a_rejected_config_naming_the_key(tmp_path: Path) -> None:
    # the model is built after the data (its input size), so the start-up checks cannot build it: the builder
    # names the key of the argument SmallCNN refused
    with pytest.raises(ConfigError) as info:
        train(compose_cfg(tmp_path / "run", "model.width=-4", *QUICK))
    assert info.value.problems == ["model.width=-4: must be an integer in [1, inf)"]
    cause = info.value.__cause__
    assert cause is not None and type(cause.__cause__).__name__ == "InstantiationException"  # the chain is kept
    assert not (tmp_path / "run").exists()  # rejected before it trained: nothing left


class ExplodingCallback(pl.Callback):
    """A constructor that fails for a reason that is not one of its arguments (start-up checks let it pass)."""

    def __init__(self) -> None:
        raise RuntimeError("disk on fire")


def test_a_bad_callback_argument_is_refused_at_start_up_by_the_callback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        train(compose_cfg(tmp_path, "callbacks.ema.decay=1.5", *QUICK))
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("callbacks.ema")
    assert "decay" in info.value.problems[0] and "1.5" in info.value.problems[0]
    assert not (tmp_path / "metrics.json").exists()


def test_constructor_error_keeps_its_root_cause(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Error in call to target"):
        train(compose_cfg(tmp_path, "+callbacks.boom._target_=tests.test_run_records.ExplodingCallback", *QUICK))
    record = read_record(tmp_path / "metrics.json")
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: disk on fire"
    assert record["error_chain"][0].startswith("InstantiationException")
    assert record["error_chain"][-1] == record["error"]


def run_cli(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIT_TRICKS_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweep_records_every_job_and_goes_on(tmp_path: Path) -> None:
    """-m with rejected configs (a bad lr; a bad EMA decay, refused by EMAWeights itself) and two good jobs: 6 records,
    the report ranks the good ones."""
    old = os.umask(0o022)
    try:
        proc = run_cli(tmp_path, "-m", "optimizer.lr=-1,0.1", "callbacks.ema.decay=1.5,0.5,0.9", *QUICK)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns").iterdir())
    records = {int(p.parent.name): read_record(p) for p in sweep.glob("*/metrics.json")}
    assert sorted(records) == list(range(6)), sorted(records)
    for record in records.values():
        assert validate_record({k: v for k, v in record.items()}) == [], record
    by_status = {num: (r["status"], r["error"] or "") for num, r in records.items()}
    assert sum(s == "failed" and e.startswith("ConfigError: optimizer.lr=-1") for s, e in by_status.values()) == 3
    decay_fail = [r for r in records.values() if r["status"] == "failed" and "1.5" in (r["error"] or "")
                  and r["error"].startswith("ConfigError: callbacks.ema")]
    assert len(decay_fail) == 1
    good = [r for r in records.values() if r["status"] == "ok"]
    assert len(good) == 2
    for r in good:
        files = r["checkpoints"]
        assert r["objective_source"] == "best_checkpoint" and r["evaluated_weights"] == "ema"
        assert r["best_ckpt"] == files["best_ema"] == r["reproduced_by"]["objective"] == r["reproduced_by"]["test/acc"]
        assert files["best_ema"] == str(ema_checkpoint_path(files["best"]))
        for path in [*(f for f in files.values() if f), Path(r["run_dir"]) / "metrics.json",
                     Path(r["run_dir"]) / "config_resolved.yaml"]:
            assert stat.S_IMODE(Path(path).stat().st_mode) == 0o644, path
    report = build_report(sweep)
    assert report.direction == "minimize" and len(report.ok_jobs) == 2
    assert report.ok_jobs[0].objective <= report.ok_jobs[1].objective
    markdown = report.markdown()
    assert "ConfigError: callbacks.ema" in markdown and "ConfigError: optimizer.lr=-1" in markdown


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_single_run_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path: Path) -> None:
    """(An unknown group option is one line too: tests/cli/test_hydra_errors.py, in-process.)"""
    proc = run_cli(tmp_path, "optimizer.lr=null", "callbacks.ema.decay=1.5")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 3 and "optimizer.lr=None" in lines[1], proc.stderr
    assert lines[2].startswith("  - callbacks.ema") and "1.5" in lines[2]  # both problems at once
    assert not list((tmp_path / "logs" / "train" / "runs").iterdir())  # the rejected run left no folder
    proc = run_cli(tmp_path, "callbacks.ema.decay=1.5", "trainer.fast_dev_run=true")  # refused by EMAWeights itself
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[1].startswith("  - callbacks.ema") and "decay" in lines[1] and "1.5" in lines[1]
    assert not list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert "Traceback" not in proc.stderr
