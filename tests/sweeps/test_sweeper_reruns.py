"""lit_optuna reruns that used to lose or misstate trials: an interrupted grid point, a changed choice list, a
refused rerun of a finished sweep, a preempted trial continued from its checkpoint. In-process runs of the stand-in
app (tests/sweeps/optuna_app), so each sweep costs a fraction of a second."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.global_hydra import GlobalHydra
from optuna.trial import TrialState

from lit_tricks.sweeps.report import build_report
from lit_tricks.sweeps.trials import CONTINUES, FAIL_REASON, RESUME_FROM, is_counted
from lit_tricks.validation import ArgumentError
from tests.sweeps.optuna_app.app import main

FAST = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.poll_interval=0.1"]
GRID = ["hydra/sweeper=lit_optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=null",
        "hydra.sweeper.study_name=grid", "trainer.max_epochs=1"]


@pytest.fixture
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sweep(*overrides)``: one ``app.py -m ...`` run in this process (HYDRA_FULL_ERROR: errors propagate)."""
    monkeypatch.setenv("OPTUNA_APP_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)

    def run(*overrides: str) -> None:
        monkeypatch.setattr(sys, "argv", ["app.py", "-m", *FAST, *overrides])
        GlobalHydra.instance().clear()
        try:
            main()
        finally:
            GlobalHydra.instance().clear()

    return run


def study(tmp_path: Path, name: str) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'logs' / 'optuna_app' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=url)


def sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "optuna_app" / "multiruns"


def test_an_interrupted_grid_point_is_evaluated_on_resume_and_none_twice(tmp_path: Path, sweep: Any) -> None:
    grid = [*GRID, "optimizer.lr=0.3,0.1,0.03,0.01"]
    with pytest.raises(KeyboardInterrupt):
        sweep(*grid, "interrupt_at_trial=1")  # Ctrl-C inside the second grid point
    first = study(tmp_path, "grid")
    assert [t.state for t in first.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep(*grid)
    assert not [w for w in caught if "heartbeat_interval" in str(w.message)]  # Optuna's, not the user's to act on
    trials = study(tmp_path, "grid").trials
    counted = sorted(t.params["optimizer.lr"] for t in trials if is_counted(t))
    assert counted == [0.01, 0.03, 0.1, 0.3]  # every point exactly once, the interrupted one included


def test_a_changed_choice_list_is_refused_before_a_trial_or_file_is_made(tmp_path: Path, sweep: Any) -> None:
    sweep(*GRID, "optimizer.lr=0.3,0.1")
    multirun = next(sweep_dir(tmp_path).glob("*/multirun.yaml"))
    before = multirun.read_text()
    with pytest.raises(ArgumentError, match=r"optimizer.lr differs from what study 'grid' sampled \(choice\(0.3, "
                                            r"0.1\)\).*new hydra.sweeper.study_name, got '0.3,0.1,0.03'"):
        sweep(*GRID, "optimizer.lr=0.3,0.1,0.03")  # an extended grid under the same study_name
    trials = study(tmp_path, "grid").trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)  # no RUNNING trial left behind
    assert multirun.read_text() == before


def test_a_refused_rerun_of_a_finished_sweep_changes_nothing_its_report_reads(tmp_path: Path, sweep: Any) -> None:
    sweep(*GRID, "optimizer.lr=0.3,0.1")
    folder = next(sweep_dir(tmp_path).iterdir())
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(ArgumentError, match=r"optimizer.lrr does not compose into a job config: .*"
                                            r"Could not override 'optimizer.lrr'"):
        sweep(*GRID, "optimizer.lr=0.3,0.1", "optimizer.lrr=1,2")  # the finished sweep's command with a typo
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    report = build_report(folder)
    assert "optimizer.lrr" not in report.markdown() and report.param_names == ["optimizer.lr"]


def test_a_preempted_trial_is_continued_from_its_checkpoint(tmp_path: Path, sweep: Any) -> None:
    args = ["hparams_search=tpe", "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=pre", "trainer.max_epochs=3"]
    with pytest.raises(SystemExit) as info:  # SIGTERM inside trial 1's epoch 1: last-preempted.ckpt, exit 0
        sweep(*args, "preempt_at_trial=1")
    assert info.value.code == 0
    sweep(*args)
    trials = {t.number: t for t in study(tmp_path, "pre").trials}
    assert trials[1].state == TrialState.FAIL and not is_counted(trials[1])
    assert "interrupted" in trials[1].user_attrs[FAIL_REASON]
    successors = [t for t in trials.values() if t.user_attrs.get(CONTINUES) == 1]
    assert len(successors) == 1
    successor = successors[0]
    ckpt = Path(trials[1].user_attrs["job_dir"]) / "checkpoints" / "last-preempted.ckpt"
    assert successor.state == TrialState.COMPLETE and successor.params == trials[1].params
    assert successor.user_attrs[RESUME_FROM] == str(ckpt)
    assert sum(is_counted(t) for t in trials.values()) == 3 and len(trials) == 4
    # the work done before the preemption (epochs 0, 1) is not redone: the continuation runs epoch 2 only
    epochs = [line.split() for line in (tmp_path / "logs" / "epochs.log").read_text().splitlines()]
    assert [int(e) for n, _, e in epochs if int(n) == 1] == [0, 1]
    assert [int(e) for n, _, e in epochs if int(n) == successor.number] == [2]
    folder = sweep_dir(tmp_path) / "pre"
    record = json.loads((folder / str(successor.number) / "metrics.json").read_text())
    assert record["resumed_from"] == str(ckpt) and record["objective"] == successor.value
    report = {j.num: j for j in build_report(folder).jobs}
    assert report[1].status == "continued" and f"continued by trial {successor.number}" in str(report[1].error)
    assert report[successor.number].status == "ok"
    assert "4 jobs: 3 ok, 0 failed, 1 continued" in build_report(folder).markdown()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_preempted_train_trial_resumes_from_preempted_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with lit-tricks-train itself: SIGTERM in trial 0 (the Preemption callback writes last-preempted.ckpt and
    exits 0); the rerun's trial 1 trains on from that checkpoint's step, with the trial's parameters."""
    from tests.helpers.cli import run_train_cli

    monkeypatch.setenv("LIT_TRICKS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    args = ["-m", "hparams_search=tpe", "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=pre",
            "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1"]

    def run(*extra: str) -> Any:
        return run_train_cli(monkeypatch, *args, *extra)

    assert run("+callbacks.sigterm._target_=tests.cli.test_noise.SigtermAt") in (0, None)  # preempted, exit 0
    folder = tmp_path / "logs" / "train" / "multiruns" / "pre"
    ckpt = folder / "0" / "checkpoints" / "last-preempted.ckpt"
    assert ckpt.is_file() and not (folder / "0" / "metrics.json").exists()
    assert run() in (0, None)
    trials = {t.number: t for t in optuna.load_study(
        study_name="pre", storage=f"sqlite:///{tmp_path / 'logs' / 'train' / 'optuna.db'}").trials}
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE
    assert trials[1].user_attrs[CONTINUES] == 0 and trials[1].params == trials[0].params
    record = json.loads((folder / "1" / "metrics.json").read_text())
    assert record["status"] == "ok" and record["resumed_from"] == str(ckpt)
    rows = (next((folder / "1").glob("csv/version_*/metrics.csv"))).read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(float(r.split(",")[header.index("step")])) for r in rows[1:]
             if r.split(",")[header.index("train/loss_step")]]
    saved = int(__import__("torch").load(ckpt, weights_only=True, map_location="cpu")["global_step"])
    assert saved == 2 and min(steps) >= saved  # trained on from step 2: the preempted work was not redone
    report = {j.num: j for j in build_report(folder).jobs}
    assert report[0].status == "continued" and report[1].status == "ok"


def test_a_failed_trials_reason_names_the_problem_not_just_its_header() -> None:
    # seen: a failed trial's fail_reason was only "ConfigError: invalid config (1 problem):"
    from hydra.core.utils import JobReturn, JobStatus

    from lit_tricks.config_checks import ConfigError
    from lit_tricks.sweeps.batch import job_outcome

    ret = JobReturn()
    ret.status, ret._return_value = JobStatus.FAILED, ConfigError(["module.norm='group:7': 7 groups must divide 32"])
    assert job_outcome(ret, {}) == ("FAIL", None, "ConfigError: module.norm='group:7': 7 groups must divide 32")
    record = {"status": "failed", "error": "ConfigError: model.width=-4: must be an integer in [1, inf)"}
    assert job_outcome(ret, record)[2] == record["error"]  # the job's own record wins


def test_a_continuation_that_never_launched_leaves_the_work_owed(tmp_path: Path) -> None:
    from lit_tricks.sweeps.trials import JOB_DIR, continuation

    study_ = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="c")
    old = study_.ask({"lr": optuna.distributions.FloatDistribution(0.0, 1.0)})
    old.set_user_attr(JOB_DIR, str(tmp_path / "0"))
    study_.tell(old, state=TrialState.FAIL)  # interrupted: not counted
    (tmp_path / "0.ckpt").write_bytes(b"x")
    found = continuation(study_.trials, lambda _: str(tmp_path / "0.ckpt"))
    assert found is not None and found[1][CONTINUES] == 0
    study_.enqueue_trial(found[0], user_attrs=found[1])
    surplus = study_.ask()
    surplus.set_user_attr(FAIL_REASON, "surplus: n_trials=1 already running or finished")
    study_.tell(surplus, state=TrialState.FAIL)  # asked one too many: never launched
    again = continuation(study_.trials, lambda _: str(tmp_path / "0.ckpt"))
    assert again is not None and again[1][CONTINUES] == 0  # trial 0's work is still owed
