"""A few real interruptions of ``scripts/train.py`` processes (the in-process grid simulates them): ``kill -9`` in the
middle of an epoch and inside a checkpoint write, and the documented CLI composition stopped by SIGTERM, each
restarted with ``resume=auto`` and compared bit for bit with the uninterrupted run (run in-process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.resume.harness import ROOT, Fault, assert_same, cli_overrides, outcome, run

#: Bound on one training process (~5-10 s on an idle 2-core machine).
PROCESS_TIMEOUT_S = 240


def _train(*overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1",
           "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


CASES = {
    "kill -9 mid-epoch": ("default", Fault("realkill", "batch", 1, 4), -signal.SIGKILL, ()),
    "kill -9 inside a checkpoint write": ("default", Fault("realkill", "write", 1, 1), -signal.SIGKILL, ()),
    "SIGTERM, the documented CLI composition": (
        "default", Fault("term", "batch", 1, 3), 0,
        ("callbacks=[default,rng_state,preemption,nan_guard]", "++trainer.val_check_interval=1.0",
         "callbacks.last_checkpoint.every_n_train_steps=null")),
}


@pytest.mark.slow
@pytest.mark.timeout(3 * PROCESS_TIMEOUT_S)
@pytest.mark.parametrize("case", sorted(CASES))
def test_real_interruption_then_resume_auto_equals_the_uninterrupted_run(tmp_path: Path, case: str) -> None:
    recipe, fault, code, extra = CASES[case]
    reference = tmp_path / "ref" / "run"
    assert run(recipe, reference, extra=extra) == "done"
    run_dir = tmp_path / "cell" / "run"
    first = _train(*cli_overrides(recipe, run_dir, fault, extra=extra))
    assert first.returncode == code, first.stderr[-3000:]
    if fault.hook == "write":
        assert list((run_dir / "checkpoints").glob(".tmp-*")), "the kill left a torn temp file"
    second = _train(*cli_overrides(recipe, run_dir, resume=True, extra=extra))
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same(outcome(run_dir), outcome(reference), case)
