"""Hydra + DDP on CPU (trainer=ddp_cpu, 2 gloo processes) through a real ``@hydra.main`` app in a subprocess.

Without lit_tricks' strategy (Lightning's DDPStrategy re-running ``sys.argv``) rank 1 re-runs the whole sweep and
creates further multirun directories; these tests pin the fixed behaviour: one output directory per job, the same
config hash on both ranks, nothing written by rank 1, a clean environment for the next job, and a job failing on
rank 0 does not hang the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

APP = Path(__file__).resolve().parent / "ddp_app" / "app.py"
ROOT = Path(__file__).resolve().parents[2]
# What rank 0 writes into a job directory (rank 1 writes nothing there).
RANK0_FILES = {"metrics.json", ".hydra", "app.log", "checkpoints"}


ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # as ddp_app/app.py probes


def run_app(tmp_path: Path, *overrides: str, timeout: int) -> subprocess.CompletedProcess[str]:
    # launched as from a fresh shell: DDP variables that earlier in-process DDP tests left in this pytest process
    # (Lightning sets MASTER_ADDR/MASTER_PORT in the parent of ddp_spawn) would read as a leak from job 0
    clean = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env = {**clean, "DDP_APP_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(APP), *overrides, f"probe_dir={tmp_path / 'probe'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)


def probes(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "probe").glob("*.json"))]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_single_ddp_run_one_dir_same_config_on_both_ranks(tmp_path: Path) -> None:
    proc = run_app(tmp_path, "trainer.strategy.scale_lr=true", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "logs" / "runs").iterdir())
    assert len(runs) == 1 and not (tmp_path / "logs" / "multiruns").exists()
    run = runs[0]
    seen = probes(tmp_path)
    assert sorted(p["rank"] for p in seen) == [0, 1]
    assert len({p["hash"] for p in seen}) == 1
    assert {p["run_dir"] for p in seen} == {str(run)}
    assert all(p["world_size"] == 2 and p["timeout_s"] == 60.0 for p in seen)
    # linear scaling rule: lr x world size on both ranks
    assert all(p["optimizer_lr"] == pytest.approx(2 * p["lr"]) for p in seen)
    assert {p.name for p in run.iterdir()} <= RANK0_FILES
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_multirun_failure_on_rank0_does_not_hang_the_next_job(tmp_path: Path) -> None:
    # the process-group timeout is 1800 s here: a rank left waiting would hold the sweep for 30 minutes, far past the
    # subprocess limit (which only leaves room for slow shared CI machines; the run takes ~20 s of CPU)
    proc = run_app(tmp_path, "-m", "lr=0.1,0.2", "fail_jobs=[0]", "trainer.strategy.timeout_s=1800", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "multiruns").iterdir())
    assert len(sweeps) == 1, "a child rank re-ran the sweep"
    assert not (tmp_path / "logs" / "runs").exists()
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    failed = json.loads((sweeps[0] / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    assert json.loads((sweeps[0] / "1" / "metrics.json").read_text())["status"] == "ok"
    seen = probes(tmp_path)
    for num, lr in ((0, 0.1), (1, 0.2)):
        ranks = [p for p in seen if p["job_num"] == num]
        assert sorted(p["rank"] for p in ranks) == [0, 1], f"job {num}: {ranks}"
        assert len({p["hash"] for p in ranks}) == 1
        assert {p["run_dir"] for p in ranks} == {str(sweeps[0] / str(num))}
        assert all(p["lr"] == lr for p in ranks)
    # the second job started with a clean environment: nothing of job 0's DDP set-up leaked
    job1_rank0 = next(p for p in seen if p["job_num"] == 1 and p["rank"] == 0)
    assert all(v is None for v in job1_rank0["env_at_job_start"].values()), job1_rank0["env_at_job_start"]
    for num in ("0", "1"):
        assert {p.name for p in (sweeps[0] / num).iterdir()} <= RANK0_FILES
