"""The local 2-node SLURM cluster of ``make cluster-up`` for the ``slurm`` tests: one session fixture brings it up
(installing SLURM, slurmdbd, munge and MariaDB with apt when missing) and down, and small polling helpers (every wait
is bounded). ``CLUSTER_DIR`` and ``CLUSTER_PORT_BASE`` are passed on to ``make``, as for ``make cluster-up``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR") or REPO / ".cluster")
SLURM_CONF = CLUSTER_DIR / "slurm.conf"
#: cluster-up: apt install (about a minute) + the daemons' start (≤120 s each).
CLUSTER_UP_TIMEOUT_S = 600
#: One SLURM job of these tests: python start-up on two ranks + a few steps (~20 s idle; minutes on shared cores).
JOB_TIMEOUT_S = 420
#: Variables of an in-process DDP test that must not reach a job.
DDP_VARIABLES = ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "PL_GLOBAL_SEED")


def _daemon_pids() -> dict[str, int]:
    """The daemons of this cluster that still run, by the pid files of ``make cluster-up``: {pid file stem: pid}."""
    pids = {}
    for pid_file in (CLUSTER_DIR / "run").glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue
        if Path(program.decode()).name.startswith(pid_file.stem.split("-")[0]):
            pids[pid_file.stem] = pid
    return pids


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    """``make cluster-up``; yields ``.cluster/slurm.conf`` (also in ``SLURM_CONF``); ``make cluster-down`` after,
    unless the cluster was already up before the session (then it is left as it was)."""
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if shutil.which("slurmctld") is None and not can_install:
        pytest.skip("SLURM is not installed and apt-get cannot install it here (needs root): make cluster-up")
    was_up = "slurmctld" in _daemon_pids()
    up = subprocess.run(["make", "-s", "cluster-up"], cwd=REPO, capture_output=True, text=True,
                        timeout=CLUSTER_UP_TIMEOUT_S, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert up.returncode == 0, f"make cluster-up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_CONF)
    try:
        yield SLURM_CONF
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if not was_up:
            started = _daemon_pids()
            down = subprocess.run(["make", "-s", "cluster-down"], cwd=REPO, capture_output=True, text=True,
                                  timeout=180)
            assert down.returncode == 0, down.stderr[-3000:]
            left = {name: pid for name, pid in started.items() if Path(f"/proc/{pid}").exists()}
            assert left == {}, f"still running after make cluster-down: {left}"


def job_env(**extra: str) -> dict[str, str]:
    """The environment for a command that submits or runs jobs: this cluster, one thread, no DDP leftovers."""
    env = {k: v for k, v in os.environ.items() if k not in DDP_VARIABLES}
    env.update({"SLURM_CONF": str(SLURM_CONF), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra})
    return env


def run(cmd: list[str], timeout: float, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


#: Overrides of a tiny digits job (2 training batches an epoch).
TINY = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1", "logger=none")


def multirun_command(sweep_dir: Path, *overrides: str) -> list[str]:
    """``python scripts/train.py -m hydra/launcher=slurm_local <tiny> <overrides>`` into ``sweep_dir``."""
    return [sys.executable, "scripts/train.py", "-m", "hydra/launcher=slurm_local", *TINY, *overrides,
            f"hydra.sweep.dir={sweep_dir}"]


def train_multirun(sweep_dir: Path, *overrides: str, timeout: float) -> subprocess.CompletedProcess:
    """Run :func:`multirun_command` to its end (tiny digits jobs)."""
    return run(multirun_command(sweep_dir, *overrides), timeout=timeout)


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o <id>`` as a dict (JobState, NumNodes, NumTasks, Restarts, ExitCode, ...)."""
    out = run(["scontrol", "-o", "show", "job", job_id], timeout=30).stdout
    info: dict[str, str] = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None while it does not exist (or is being written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sacct_state(job_id: str) -> str:
    """The job's state in SLURM accounting (``sacct``), e.g. COMPLETED, FAILED, CANCELLED; "" before it is known."""
    out = run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id], timeout=30).stdout
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return states.get(job_id, "").split(" ")[0]  # "CANCELLED by 0" -> CANCELLED


def submitit_job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM ids (``<array>_<task>``) of a submitit sweep's jobs, from its ``.submitit/`` folders."""
    folders = (sweep_dir / ".submitit").iterdir()
    return sorted(p.name for p in folders if p.is_dir() and re.fullmatch(r"\d+_\d+", p.name))


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
