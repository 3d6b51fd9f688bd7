"""Faults that hit one rank of a 2-process DDP run (gloo, the ``trainer=ddp_cpu`` setting: CPU, 60 s process-group
timeout), without SLURM: SIGTERM to rank 0 or rank 1, a NaN loss on rank 1 only, ``kill -9`` of rank 1.

Every fault is injected by the rank itself at a fixed step (tests/fault/battery/driver.py ``--fault-rank``): no
sleeping, no races. 3 steps per epoch per rank, 9 in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lit_tricks.fault.resume import checkpoint_is_intact, is_training_checkpoint
from tests.fault.battery.conftest import DDP_TIMEOUT_S, differences, final_state_differences, load, run_driver

STEP = 4  # mid epoch 1

pytestmark = [pytest.mark.slow, pytest.mark.ddp]


def _exit_notes(root: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(root.glob("exit_rank*.txt"))}


@pytest.mark.timeout(960)  # 3 DDP runs with the shared reference, on shared cores
@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(tmp_path: Path, rank: int,
                                                                  ddp_reference: dict[str, Any]) -> None:
    root = tmp_path / "run"
    common = ("--root", str(root), "--devices", "2", "--every-n-steps", "100")
    run_driver(*common, "--sigterm-at-step", str(STEP), "--fault-rank", str(rank), expect=0,
               timeout=DDP_TIMEOUT_S)
    # both ranks agreed at the end of the signalled step, took part in one save and exited 0
    assert _exit_notes(root) == {"exit_rank0": "SystemExit 0", "exit_rank1": "SystemExit 0"}
    saved = [p.name for p in root.rglob("*.ckpt") if p.parent.name != "epochs" and not p.name.startswith("ema-")]
    assert saved == ["last-preempted.ckpt"]  # (EMAWeights adds its weights-only twin ema-last-preempted.ckpt)
    assert torch.load(root / "checkpoints" / "last-preempted.ckpt", weights_only=True)["global_step"] == STEP + 1
    if rank == 1:  # the signal reached the rank that does not write: the resume is still exact
        run_driver(*common, "--resume", "auto", "--out", str(root / "result.pt"), timeout=DDP_TIMEOUT_S)
        resumed = load(root / "result.pt")
        assert resumed["resumed_from"] == str(root / "checkpoints" / "last-preempted.ckpt")
        assert final_state_differences(ddp_reference, resumed) == []


@pytest.mark.timeout(330)
def test_nan_on_one_rank_gives_the_same_guard_decision_on_every_rank(tmp_path: Path) -> None:
    # no hang: a rank that stopped alone would wait in the other's next collective
    run_driver("--root", str(tmp_path), "--devices", "2", "--nan-at-step", "3", "--fault-rank", "1",
               "--nan-policies", "stop", expect=0, timeout=DDP_TIMEOUT_S)
    rank0, rank1 = load(tmp_path / "stop" / "result.pt"), load(tmp_path / "stop" / "result_rank1.pt")
    for result in (rank0, rank1):
        assert result["callbacks"]["NaNGuard"]["bad_steps"] == [3]
        assert result["should_stop"] and result["global_step"] == 4
        assert all(bool(torch.isfinite(v).all()) for v in result["state_dict"].values() if v.is_floating_point())
    assert differences(rank0["state_dict"], rank1["state_dict"]) == []


@pytest.mark.timeout(330)
def test_kill9_of_rank1_fails_the_job_and_keeps_rank0s_last_checkpoint(tmp_path: Path) -> None:
    proc = run_driver("--root", str(tmp_path), "--devices", "2", "--kill-at-step", str(STEP), "--fault-rank", "1",
                      expect=None, timeout=DDP_TIMEOUT_S)  # rank 0 must fail, not wait forever
    assert proc.returncode != 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint_is_intact(last) is None and is_training_checkpoint(last)
    assert torch.load(last, weights_only=True)["global_step"] in (STEP, STEP + 1)
