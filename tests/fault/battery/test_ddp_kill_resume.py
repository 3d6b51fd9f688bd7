"""Battery D: R under 2-process DDP on CPU (gloo): kill -9 (every rank) at step 4, resume, equal to uninterrupted.

Each rank draws from its own RNG stream (the driver reseeds per rank), so this also checks that RNGState keeps and
restores the states of every rank, and that the data position of each rank's shard resumes (ResumableSampler).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault.battery.conftest import final_state_differences, load, run_driver

KILL_STEP = 4  # 3 steps per epoch per rank: mid epoch 1


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(360)  # three 2-process runs: ~45 s on an idle 2-core machine, minutes on shared cores
def test_ddp_kill9_resume_equals_uninterrupted(tmp_path: Path) -> None:
    ref_root, root = tmp_path / "reference", tmp_path / "run"
    run_driver("--root", str(ref_root), "--devices", "2", "--out", str(ref_root / "result.pt"))
    run_driver("--root", str(root), "--devices", "2", "--kill-at-step", str(KILL_STEP), expect=-9)
    run_driver("--root", str(root), "--devices", "2", "--resume", "auto", "--out", str(root / "result.pt"))
    reference, resumed = load(ref_root / "result.pt"), load(root / "result.pt")
    assert resumed["resumed_from"] and reference["global_step"] == 9
    assert len(reference["callbacks"]["RNGState"]["per_rank"]) == 2
    assert final_state_differences(reference, resumed) == []
