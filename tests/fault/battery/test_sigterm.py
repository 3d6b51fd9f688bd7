"""Battery S: SIGTERM at the start of step 8 (mid epoch 1); only the Preemption checkpoint can save the run.

Interval checkpoints are off (every 100 steps), so the only mid-epoch state on disk is what Preemption writes at the
end of step 8. The process exits with code 0; ``resume=auto`` restarts from that file and ends equal to the
uninterrupted run. The peer: plain Lightning also exits 0 on SIGTERM (SIGTERMException) but writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fault.battery.conftest import final_state_differences, load, run_driver

SIGTERM_STEP = 8


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path: Path, reference: dict[str, Any]) -> None:
    root = str(tmp_path)
    run_driver("--root", root, "--every-n-steps", "100", "--sigterm-at-step", str(SIGTERM_STEP), expect=0)
    saved = tmp_path / "checkpoints" / "last-preempted.ckpt"
    assert saved.is_file()
    import torch

    assert torch.load(saved, weights_only=True)["global_step"] == SIGTERM_STEP + 1
    run_driver("--root", root, "--every-n-steps", "100", "--resume", "auto", "--out", str(tmp_path / "result.pt"))
    resumed = load(tmp_path / "result.pt")
    assert resumed["resumed_from"] == str(saved)
    assert resumed["records"][0]["step"] == SIGTERM_STEP + 2
    assert final_state_differences(reference, resumed) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.xfail(strict=True, reason="plain Lightning exits on SIGTERM without saving a checkpoint")
def test_plain_lightning_sigterm_saves_a_checkpoint(tmp_path: Path) -> None:
    run_driver("--root", str(tmp_path), "--plain", "--every-n-steps", "100", "--sigterm-at-step", str(SIGTERM_STEP),
               expect=0)
    ckpt_dir = tmp_path / "checkpoints"
    assert ckpt_dir.is_dir() and list(ckpt_dir.glob("*.ckpt")), "no checkpoint of the interrupted epoch"
