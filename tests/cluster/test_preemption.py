"""Preemption of a running 2-node DDP job on the local SLURM cluster: ``scontrol requeue`` (SLURM ends and requeues
the job: SIGTERM to every task) and ``scancel --signal=USR1`` (the time-limit warning, sent now instead of by
``--signal=USR1@<s>``, which may fire up to 60 s early). Every rank stops at the end of the same step, one
checkpoint is written, the job is requeued exactly once (by SLURM, resp. by the Preemption callback: Lightning's
own auto-requeue is off), and the requeued job, started with ``--resume auto``, ends bit for bit equal to an
uninterrupted run: weights, optimizer, EMA weights, ensemble members, RNG states (the fault battery's driver).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.cluster.conftest import JOB_TIMEOUT_S, REPO, job_env, job_info, run, wait_for
from tests.fault.battery.conftest import DDP_TIMEOUT_S, final_state_differences, load, run_driver

pytestmark = pytest.mark.slurm

DRIVER = REPO / "tests" / "fault" / "battery" / "driver.py"
PAUSE_STEP = 4  # every rank waits at the start of step 4 until the signal reached it


def _submit(root: Path) -> str:
    script = root / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=lt_preempt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=20
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={root}/slurm-%j.out
export MASTER_ADDR=127.0.0.1
srun {sys.executable} {DRIVER} --root {root} --devices 1 --num-nodes 2 --resume auto \\
    --pause-at-step {PAUSE_STEP} --out {root}/result.pt
""")
    out = subprocess.run(["sbatch", "--parsable", str(script)], cwd=REPO, env=job_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip().split(";")[0]


def _paused(root: Path, job: str) -> bool:
    if (root / "paused").is_file():
        return True
    state = job_info(job)["JobState"]
    if state in ("FAILED", "COMPLETED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        log = root / f"slurm-{job}.out"
        raise AssertionError(f"job {job} ended ({state}) before pausing:\n{log.read_text()[-4000:]}")
    return False


def _finished(job: str) -> dict[str, str] | None:
    info = job_info(job)
    return info if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: 2 ranks (gloo) on this machine, no SLURM."""
    root = tmp_path_factory.mktemp("reference")
    run_driver("--root", str(root), "--devices", "2", "--out", str(root / "result.pt"), timeout=DDP_TIMEOUT_S)
    return load(root / "result.pt")


@pytest.mark.timeout(2 * DDP_TIMEOUT_S + 3 * JOB_TIMEOUT_S)
@pytest.mark.parametrize("interrupt", [["scontrol", "requeue"], ["scancel", "--signal=USR1"]],
                         ids=["scontrol_requeue", "scancel_usr1"])
def test_preempted_multinode_job_is_requeued_once_and_resumes_exactly(
        cluster: Path, tmp_path: Path, ddp_reference: dict[str, Any], interrupt: list[str]) -> None:
    root = tmp_path / "run"
    root.mkdir()
    job = _submit(root)
    wait_for(lambda: _paused(root, job), JOB_TIMEOUT_S, f"job {job} to reach step {PAUSE_STEP}", interval=1.0)
    run([*interrupt, job], timeout=60)
    info = wait_for(lambda: _finished(job), 2 * JOB_TIMEOUT_S, f"job {job} to be requeued and finish", interval=1.0)
    log = (root / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert info["Restarts"] == "1", f"requeued {info['Restarts']} times"
    # first run: both ranks agreed at the end of the signalled step, wrote one checkpoint together (a collective
    # save: its step is the signalled one) and exited 0, each writing its exit note. After the save SLURM ends every
    # task of a requeued job (rank 0's `scontrol requeue` sends them SIGTERM); the ranks keep the signals handled
    # through their exit, so none is killed while it unwinds (rank 1's note was once missing when they did not).
    notes = {p.name: p.read_text() for p in root.glob("exit_rank*.txt")}
    assert notes == {"exit_rank0.txt": "SystemExit 0", "exit_rank1.txt": "SystemExit 0"}, notes
    saved = root / "checkpoints" / "last-preempted.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == PAUSE_STEP + 1
    assert not list(root.rglob("hpc_ckpt_*.ckpt")), "Lightning's SLURM auto-requeue saved too (two signal owners)"
    # the requeued run resumed from it and ends equal to the uninterrupted run
    resumed = load(root / "result.pt")
    assert resumed["resumed_from"] == str(saved)
    assert resumed["records"][0]["step"] == PAUSE_STEP + 2
    assert final_state_differences(ddp_reference, resumed) == []
