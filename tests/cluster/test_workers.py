"""``lit-tricks-workers`` on the local SLURM cluster (2 one-CPU nodes): 3 workers (array tasks) of one study on a
journal file. The command returns while the workers are queued. Worker A is cancelled (``scancel``) in the middle of
trial 0, worker B gets the time-limit warning (SIGUSR1) in the middle of trial 1 and is requeued; the report reads
the study while they run; the third worker starts in the freed slot. The study ends with exactly ``n_trials``
finished trials, trials 0 and 1 failed and replaced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_tricks.cli import report as report_cli
from lit_tricks.cli import workers
from tests.cluster.conftest import (
    DDP_VARIABLES,
    JOB_TIMEOUT_S,
    REPO,
    TINY,
    job_info,
    read_json,
    run,
    sacct_state,
    wait_for,
)

pytestmark = pytest.mark.slurm

N_TRIALS = 4


def _queued(job: str) -> list[str]:
    """The array's tasks SLURM still holds (pending, running, completing): ``<job>_<task> <state>`` lines."""
    return run(["squeue", "-h", "-j", job, "-o", "%i %T"], timeout=30).stdout.splitlines()


@pytest.mark.timeout(3 * JOB_TIMEOUT_S)
def test_three_workers_one_cancelled_one_requeued_mid_trial_end_at_exactly_n_trials(
        cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from lit_tricks.sweeps.study import is_counted

    sweep, journal = tmp_path / "sweep", tmp_path / "study.journal"
    monkeypatch.chdir(REPO)  # the workers run where they were submitted (tests.cluster.faults imports from there)
    for name in DDP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    rc = workers.main([
        "--workers", "3", "--cpus-per-task", "1", "--mem", "2G", "--time", "20",
        "hparams_search=tpe", "trainer=cpu", *TINY, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.study_name=workers",
        f"hydra.sweeper.storage=journal://{journal}", "hydra.sweeper.heartbeat_interval=2",
        "hydra.sweeper.grace_period=15", "hydra.sweeper.poll_interval=1",
        "+callbacks.stall0._target_=tests.cluster.faults.StallTrial", "+callbacks.stall0.trial=0",
        "+callbacks.stall1._target_=tests.cluster.faults.StallTrial", "+callbacks.stall1.trial=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    job = re.search(r"as SLURM array job (\d+)", out).group(1)  # type: ignore[union-attr]
    assert len(_queued(job)) >= 1, "the command waited for its workers"  # it returned while they are queued
    script = (sweep / "workers" / f"{job}.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --requeue" in script

    a, b = (wait_for(lambda n=n: read_json(sweep / str(n) / "stalled"), JOB_TIMEOUT_S, f"trial {n} to stall")
            for n in (0, 1))
    assert report_cli.main([str(sweep)]) == 0  # the report reads the study while it runs: trials 0, 1 are running
    table = capsys.readouterr().out
    assert all(re.search(rf"\|\s*-\s*\|\s*{n}\s*\|\s*running\s*\|", table) for n in (0, 1)), table
    run(["scancel", a["job"]], timeout=60)
    # the time-limit warning of --signal=B:USR1@<s>, now: the Preemption callback checkpoints and requeues
    run(["scancel", "--batch", "--signal=USR1", b["job"]], timeout=60)
    wait_for(lambda: not _queued(job), 2 * JOB_TIMEOUT_S, f"the workers of array job {job} to end", interval=1.0)

    assert sacct_state(a["job"]) == "CANCELLED"
    assert sacct_state(b["job"]) == "COMPLETED" and job_info(b["job"])["Restarts"] == "1"
    b_log = (sweep / "workers" / f"{b['job']}.out").read_text()
    assert b_log.count("lit_optuna: study 'workers' (journal") == 2, b_log[-3000:]  # the requeued worker started
    storage = JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="workers", storage=storage).get_trials(deepcopy=False)
    counted = [t for t in trials if is_counted(t)]
    assert len(counted) == N_TRIALS and all(t.state.name == "COMPLETE" for t in counted)
    for stopped in trials[:2]:  # failed (told by its worker, or by the heartbeat), replaced by trials after them
        assert stopped.state.name == "FAIL" and not is_counted(stopped), stopped
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted"), trials[0].user_attrs
    others = [t for t in trials[2:] if t.state.name == "FAIL"]  # asked at the same moment as another worker's
    assert all(t.user_attrs.get("fail_reason", "").startswith("surplus") for t in others), others
    for t in counted:
        record = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert record["status"] == "ok", record["error"]
