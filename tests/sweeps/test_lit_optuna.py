"""hydra/sweeper=lit_optuna: search space, direction, resume after a killed worker, two workers on one study
(JournalStorage file; PostgreSQL, marked db), pruned trials, and every hparams_search preset running one trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lit_optuna_sweeper.lit_optuna_sweeper import LitOptunaSweeper
from lit_tricks.sweeps.report import build_report
from lit_tricks.sweeps.study import (
    FAIL_REASON,
    HEARTBEAT_KEY,
    claim_trial,
    fail_stale_trials,
    grid_search_space,
    is_counted,
    open_storage,
    override_value,
    parse_search_space,
    record_heartbeat,
)
from tests.sweeps.postgres import ensure_postgres, postgres_server

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "optuna_app" / "app.py"
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")
           if p.stem != "bagging")  # bagging: Hydra's basic sweeper over seeds (tests/sweeps/test_bagging.py)
# Test-speed heartbeat: a silent worker's trials are failed after 2 s.
FAST = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.poll_interval=0.2"]


def app_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(APP), "-m", *FAST, *overrides]


def app_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OPTUNA_APP_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(ROOT),
            "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}


def run_app(tmp_path: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(app_cmd(*overrides), capture_output=True, text=True, cwd=tmp_path, env=app_env(tmp_path),
                          timeout=200)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


APP_DRIVER = """
import sys
from hydra.core.global_hydra import GlobalHydra
from tests.sweeps.optuna_app.app import main
for argv in {runs!r}:
    sys.argv = ["app.py", "-m", *argv]
    GlobalHydra.instance().clear()
    main()
"""


def run_app_many(tmp_path: Path, *runs: list[str]) -> None:
    """Several app sweeps one after the other in one process (a Python + Hydra + Optuna start-up costs seconds)."""
    code = APP_DRIVER.format(runs=[[*FAST, *run] for run in runs])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=app_env(tmp_path), timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def records(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


def test_search_space_from_hydra_sweep_syntax() -> None:
    space, fixed = parse_search_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 1.0))", "module.weight_decay": "interval(0.0, 0.1)",
         "trainer.max_epochs": "range(1, 10, 3)", "optimizer": "sgd,adamw", "model.width": "tag(int, interval(8, 64))",
         "data.batch_size": 64},
        ["module.weight_decay=choice(0.0, 1e-4)", "seed=7"])
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1.0, log=True),
        "trainer.max_epochs": IntDistribution(1, 7, step=3),
        "optimizer": CategoricalDistribution(("sgd", "adamw")),
        "model.width": IntDistribution(8, 64),
        "module.weight_decay": CategoricalDistribution((0.0, 1e-4)),  # the command line wins
    }
    assert fixed == ["data.batch_size=64", "seed=7"]
    assert grid_search_space({"a": space["trainer.max_epochs"], "b": space["optimizer"]}) == {
        "a": [1, 4, 7], "b": ["sgd", "adamw"]}
    with pytest.raises(ValueError, match=r"hydra\.sweeper\.sampler needs choices or int ranges"):
        grid_search_space({"lr": space["optimizer.lr"]})
    assert [override_value(v) for v in (1e-05, 3, None, True, "adamw", "a b")] == [
        "1e-05", "3", "null", "true", "adamw", "'a b'"]


def test_journal_heartbeat_fails_only_silent_workers_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal://{tmp_path / 'j.log'}"), study_name="hb")
    silent, alive = study.ask(), study.ask()
    record_heartbeat(study._storage, alive._trial_id)
    study._storage.set_trial_system_attr(silent._trial_id, HEARTBEAT_KEY, time.time() - 100.0)  # beat 100 s ago
    assert fail_stale_trials(study, grace_period=30.0) == [silent.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING] and not is_counted(study.trials[0])
    assert claim_trial(study, study.ask().number, n_trials=2)  # the failed one does not count: room for a new one
    assert not claim_trial(study, study.ask().number, n_trials=2)  # alive + the new one fill n_trials=2


@pytest.mark.parametrize(("mode", "direction"), [("min", "minimize"), ("max", "maximize")])
def test_direction_follows_monitor_mode(mode: str, direction: str) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(APP.parent / "conf"), version_base="1.3"):
            cfg = compose("app", overrides=["hparams_search=tpe", f"monitor_mode={mode}"], return_hydra_config=True)
            wrong = compose("app", overrides=["hparams_search=tpe", f"monitor_mode={mode}",
                                              f"hydra.sweeper.direction={'max' if mode == 'min' else 'min'}"],
                            return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()

    def sweeper(c: Any) -> LitOptunaSweeper:
        kwargs = {k: v for k, v in c.hydra.sweeper.items() if k != "_target_"}
        s = LitOptunaSweeper(**kwargs)
        s.config = c
        return s

    assert sweeper(cfg)._direction() == direction
    with pytest.raises(ValueError, match="contradicts monitor_mode"):
        sweeper(wrong)._direction()


PRUNE_ARGS = ["hydra/sweeper=lit_optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null",
              "hydra.sweeper.seed=0", "hydra.sweeper.pruner=median", "+hydra.sweeper.pruner_kwargs.n_startup_trials=1",
              "hydra.sweeper.study_name=pruning", "optimizer.lr=0.03,0.01,0.1,0.003,0.3,1.0"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_sweep_resumes_to_exactly_n_trials_and_pruned_trials_show_as_pruned(tmp_path: Path) -> None:
    args = ["hparams_search=tpe", "hydra.sweeper.n_trials=6", "fail_at_trial=1"]
    first = run_app(tmp_path, *args, "kill_at_trial=3", ok=False)
    assert first.returncode == -9  # the worker died inside trial 3 (SIGKILL: no clean-up ran)
    sweep = tmp_path / "logs" / "optuna_app" / "multiruns" / "optuna_app_tpe"
    url = f"sqlite:///{tmp_path / 'logs' / 'optuna_app' / 'optuna.db'}"  # the default: logs/<task>/optuna.db
    assert [t.state for t in load(url, "optuna_app_tpe").trials][-1] == TrialState.RUNNING

    # the same command again resumes; once more finds nothing to do; then a pruned sweep (same process: faster)
    run_app_many(tmp_path, args, args, PRUNE_ARGS)
    study = load(url, "optuna_app_tpe")
    states = {t.number: t.state for t in study.trials}
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # monitor_mode=max in the app
    assert states[3] == TrialState.FAIL and not is_counted(study.trials[3])  # failed by the heartbeat, replaced
    assert states[1] == TrialState.FAIL and study.trials[1].user_attrs[FAIL_REASON] == "RuntimeError: loss diverged"
    assert sum(is_counted(t) for t in study.trials) == 6 and len(study.trials) == 7  # the rerun added none
    jobs = records(sweep)
    assert sorted(jobs) == [0, 1, 2, 4, 5, 6]  # job directories named by trial number across both runs
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert jobs[t.number]["objective"] == t.value
    report = {j.num: j for j in build_report(sweep).jobs}
    assert report[1].status == "failed" and "loss diverged" in str(report[1].error)
    assert report[3].status == "failed" and "heartbeat" in str(report[3].error)

    # pruning: a median pruner on a 6-point grid; pruned trials stop early and show as pruned everywhere
    sweep = next(p for p in (tmp_path / "logs" / "optuna_app" / "multiruns").iterdir() if p.name != "optuna_app_tpe")
    study = load(url, "pruning")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and len(study.trials) == 6 and all(is_counted(t) for t in study.trials)
    assert all(len(t.intermediate_values) < 3 for t in pruned)  # stopped before the last epoch
    jobs = records(sweep)
    assert all(jobs[t.number]["status"] == "pruned" for t in pruned)
    pruning_report = build_report(sweep)
    assert {j.num for j in pruning_report.jobs if j.status == "pruned"} == {t.number for t in pruned}
    assert f"{len(pruned)} pruned" in pruning_report.markdown()


def two_workers(tmp_path: Path, url: str) -> None:
    """Two sweep processes on one study, 8 trials: no duplicate, none lost, 8 finished, both took part."""
    args = app_cmd("hparams_search=tpe", "hydra.sweeper.n_trials=8", "hydra.sweeper.study_name=shared",
                   f"hydra.sweeper.storage='{url}'", f"barrier_dir={tmp_path / 'barrier'}")
    procs = [subprocess.Popen(args, cwd=tmp_path, env=app_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=200)
        assert proc.returncode == 0, err[-3000:]
    study = load(url, "shared")
    counted = [t for t in study.trials if is_counted(t)]
    assert len(counted) == 8 and all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.number for t in study.trials}) == len(study.trials)
    jobs = records(tmp_path / "logs" / "optuna_app" / "multiruns" / "shared")
    assert sorted(jobs) == sorted(t.number for t in counted)  # every result on disk is in the study, and back
    assert all(jobs[t.number]["objective"] == t.value for t in counted)
    assert len({r["pid"] for r in jobs.values()}) == 2


@pytest.mark.slow
@pytest.mark.serial  # two sweep processes at once, with a 2 s heartbeat deadline
@pytest.mark.timeout(240)
def test_two_workers_share_a_journal_file_study(tmp_path: Path) -> None:
    two_workers(tmp_path, f"journal://{tmp_path / 'study.log'}")


@pytest.mark.db
@pytest.mark.slow
@pytest.mark.timeout(900)  # installs postgresql with apt-get on a fresh machine (~1-2 min), then ~1 min
def test_two_workers_share_a_postgresql_study(tmp_path: Path) -> None:
    if ensure_postgres() is None:
        pytest.skip("PostgreSQL is not installed and apt-get cannot install it here (needs root): make test-db")
    with postgres_server() as url:
        two_workers(tmp_path, url)


DRIVER = """
import sys
from hydra.core.global_hydra import GlobalHydra
sys.path.insert(0, {scripts!r})
import train
for preset in {presets!r}:
    sys.argv = ["train.py", "-m", "hparams_search=" + preset, "hydra.sweeper.n_trials=1", "trainer.fast_dev_run=true",
                "hydra.sweeper.study_name=" + preset, "logger=none", "test=false"]
    GlobalHydra.instance().clear()
    train.main()
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_preset_runs_one_trial(tmp_path: Path) -> None:
    code = DRIVER.format(scripts=str(ROOT / "scripts"), presets=PRESETS)
    env = {**os.environ, "LIT_TRICKS_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1",
           "HYDRA_FULL_ERROR": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asha" in PRESETS and {"tpe", "random_lr", "coarse", "fine", "final", "grid"} <= set(PRESETS)
    for preset in PRESETS:
        found = list((tmp_path / "logs").glob(f"*/multiruns/{preset}/0/metrics.json"))
        assert len(found) == 1, (preset, proc.stderr[-2000:])
        record = json.loads(found[0].read_text())
        assert record["status"] == "ok", (preset, record.get("error"))
        info = json.loads((found[0].parents[1] / "optuna_study.json").read_text())
        mode = yaml.safe_load((found[0].parent / "config_resolved.yaml").read_text())["monitor_mode"]
        # monitor_mode=min by default (val/loss); hparams_search=mnist1d_tricks maximizes val/acc
        assert info["study_name"] == preset and info["direction"] == {"min": "minimize", "max": "maximize"}[mode]
        assert mode == ("max" if preset == "mnist1d_tricks" else "min")
        assert info["storage"] == f"sqlite:///{found[0].parents[3] / 'optuna.db'}"
