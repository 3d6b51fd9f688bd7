"""Sweeps whose jobs run on the local 2-node SLURM cluster (hydra/launcher=slurm_local, submitit): a multinode DDP
sweep, a sweep with a failing job, an Optuna TPE sweep in batches of 2, a sweep whose job is killed from outside.
Tiny digits jobs (2-3 steps an epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lit_tricks.cli import report as report_cli
from tests.cluster.conftest import (
    JOB_TIMEOUT_S,
    REPO,
    job_env,
    job_info,
    multirun_command,
    read_json,
    run,
    sacct_state,
    submitit_job_ids,
    train_multirun,
    wait_for,
)

pytestmark = pytest.mark.slurm


def _metrics(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _final_info(job: str) -> dict[str, str] | None:
    """``job_info(job)`` once the job has reached a final state, else None: submitit hands back a job's result as
    soon as its pickle is written, while slurmctld may still show the job RUNNING or COMPLETING for a moment."""
    info = job_info(job)
    return info if info.get("JobState") in FINAL_STATES else None


def _report(sweep_dir: Path) -> str:
    return run([sys.executable, "scripts/sweep_report.py", str(sweep_dir)], timeout=300).stdout


@pytest.mark.timeout(4 * JOB_TIMEOUT_S)
def test_multinode_ddp_sweep_runs_each_job_on_two_nodes(cluster: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    train_multirun(sweep, "trainer=multinode_cpu", "optimizer.lr=0.1,0.03", "trainer.max_epochs=2",
                   timeout=3 * JOB_TIMEOUT_S)
    metrics = _metrics(sweep)
    assert sorted(metrics) == ["0", "1"]
    for record in metrics.values():
        assert record["status"] == "ok", record["error"]
        assert (record["world_size"], record["num_nodes"]) == (2, 2)
    jobs = submitit_job_ids(sweep)
    assert len(jobs) == 2
    for job in jobs:  # each sweep job: one SLURM job of 2 nodes x 1 task, finished cleanly
        info = wait_for(lambda j=job: _final_info(j), 60, f"job {job} to reach a final state")
        assert (info["JobState"], info["NumNodes"], info["NumTasks"], info["ExitCode"]) == ("COMPLETED", "2", "2",
                                                                                             "0:0")
    report = _report(sweep)
    assert "2 jobs: 2 ok, 0 failed" in report
    assert "| 0.1 |" in report and "| 0.03 |" in report


@pytest.mark.timeout(3 * JOB_TIMEOUT_S)
def test_sweep_with_a_failing_job_finishes_the_other_and_reports_the_reason(cluster: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # job 0: every gradient of step 3 is NaN and the NaN guard (policy stop) ends the run; job 1 trains on
    train_multirun(sweep, "trainer=cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                   "callbacks.nan_guard.policy=stop", "+callbacks.nan_at._target_=tests.cluster.faults.NaNGradAt",
                   "+callbacks.nan_at.step=3,-1", timeout=2 * JOB_TIMEOUT_S)
    metrics = _metrics(sweep)
    assert metrics["0"]["status"] == "failed"
    assert metrics["0"]["error"] == "RuntimeError: NaNGuard: non-finite loss/gradient at step 3 (policy stop)"
    assert metrics["1"]["status"] == "ok" and metrics["1"]["error"] is None
    report = _report(sweep)
    assert "2 jobs: 1 ok, 1 failed" in report
    assert "NaNGuard: non-finite loss/gradient at step 3" in report


@pytest.mark.timeout(4 * JOB_TIMEOUT_S)
def test_optuna_sweep_in_batches_of_two_records_a_job_killed_from_outside_as_failed_and_goes_on(
        cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TPE sweep of 4 trials as SLURM jobs, 2 at a time (one array job per batch). Trial 0's Python gets SIGKILL
    mid-training: no result file, so only SLURM accounting (sacct: FAILED) tells submitit that the job ended; the
    launcher returns it as a failed job, the other trial of the batch and the next batch run, and the study ends
    with 4 finished trials, trial 0 failed with the reason."""
    import optuna

    sweep, db = tmp_path / "sweep", tmp_path / "optuna.db"
    cmd = multirun_command(sweep, "hparams_search=tpe", "trainer=cpu", "trainer.max_epochs=1",
                           "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                           "hydra.sweeper.sampler_kwargs.n_startup_trials=2", f"hydra.sweeper.storage=sqlite:///{db}",
                           "+callbacks.stall._target_=tests.cluster.faults.StallTrial", "+callbacks.stall.trial=0")
    with subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as sweeper:
        try:
            marker = wait_for(lambda: read_json(sweep / "0" / "stalled"), JOB_TIMEOUT_S, "trial 0 to stall")
            os.kill(marker["pid"], signal.SIGKILL)
            out, _ = sweeper.communicate(timeout=3 * JOB_TIMEOUT_S)
        finally:
            if sweeper.poll() is None:
                sweeper.kill()
    assert sweeper.returncode == 0, out[-4000:]
    jobs = submitit_job_ids(sweep)
    arrays = sorted({job.split("_")[0] for job in jobs}, key=int)
    assert len(jobs) == 4 and len(arrays) == 2  # two batches, each one SLURM array of 2 trials
    assert marker["job"] == f"{arrays[0]}_0"
    # the results come back as pickles, possibly before slurmctld has moved the last job out of COMPLETING
    expected = {job: "FAILED" if job == marker["job"] else "COMPLETED" for job in jobs}
    wait_for(lambda: {job: sacct_state(job) for job in jobs} == expected, 60, f"the jobs' accounting: {expected}")
    study = optuna.load_study(study_name="train_tpe", storage=f"sqlite:///{db}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith(
        f"LostJobError: SLURM job {marker['job']} ended FAILED without a result"), trials[0].user_attrs
    # TPE proposed the second batch after the first one's results: its learning rates are new
    assert len({t.params["optimizer.lr"] for t in trials}) == 4
    metrics = _metrics(sweep)
    assert sorted(metrics) == ["1", "2", "3"]  # the killed job wrote none
    assert all(r["status"] == "ok" for r in metrics.values()), [r["error"] for r in metrics.values()]
    assert (sweep / "optimization_results.yaml").is_file()
    assert report_cli.main([str(sweep)]) == 0  # in this process: a Python start less
    report = capsys.readouterr().out
    assert "4 jobs: 3 ok, 1 failed" in report
    assert f"SLURM job {marker['job']} ended FAILED" in report
