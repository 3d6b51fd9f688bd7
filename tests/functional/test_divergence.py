"""Trainer-free pieces of NaNGuard: the divergence rule by hand, the finite flag against torch.isfinite, undoing a
step and rolling back to a snapshot."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_tricks.functional.divergence import DivergenceDetector, finite_flag, non_finite_entries
from lit_tricks.functional.step_undo import (
    StepUndo,
    copy_buffers,
    copy_step_state,
    restore_buffers_,
    restore_snapshot,
    take_snapshot,
)


def test_divergence_rule_by_hand_and_state_round_trip() -> None:
    det = DivergenceDetector(3.0, ref_steps=3, window=2)
    assert math.isnan(det.reference)
    # reference = mean(1, 2, 3) = 2, threshold 6; a single spike resets, two in a row trigger; NaN changes nothing
    got = [det.observe(v) for v in (1.0, 2.0, 3.0, 20.0, 2.0, float("nan"), 7.0, 8.0)]
    assert got == [False] * 7 + [True] and det.reference == 2.0 and det.above == 2
    copy = DivergenceDetector(3.0, ref_steps=3, window=2)
    copy.load_state_dict(det.state_dict())
    assert copy.state_dict() == {"ref_sum": 6.0, "ref_count": 3, "above": 2} and copy.observe(9.0)
    det.restart_count()
    assert not det.observe(9.0)  # one step above after the restart
    off = DivergenceDetector(None)
    assert not any(off.observe(v) for v in (1.0, 1e9, 1e9, 1e9)) and off.ref_count == 0
    with pytest.raises(ValueError, match="divergence_factor"):
        DivergenceDetector(1.0)


def test_finite_flag_agrees_with_isfinite_and_names_the_bad_entries() -> None:
    tensors = [torch.ones(3), torch.tensor([1e38, 1e38]), torch.zeros(2, dtype=torch.float16)]
    assert bool(finite_flag(tensors)) and bool(finite_flag([]))  # 1e38: the max-abs norm does not overflow
    huge = torch.tensor([1e300], dtype=torch.float64)  # finite in float64, inf in float32
    assert bool(finite_flag([huge])) and bool(finite_flag([*tensors, huge]))
    assert not bool(finite_flag([huge, torch.tensor([float("nan")], dtype=torch.bfloat16)]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not bool(finite_flag([*tensors, torch.tensor([0.0, bad])]))
    ckpt = {"state_dict": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)},
            "optimizer_states": [{"state": {0: {"m": torch.tensor([float("inf")]), "step": torch.tensor(1.0)}}}]}
    assert non_finite_entries(ckpt) == ["state_dict.w", "optimizer_states[0].state[0].m"]
    assert non_finite_entries({"state_dict": {"w": torch.ones(1)}}) == []


def test_step_undo_restores_right_after_the_step_once_and_flush() -> None:
    param = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    opt.step()  # momentum state exists
    before = (param.detach().clone(), opt.state[param]["momentum_buffer"].clone())
    undo = StepUndo()
    undo.after_step(opt, copy_step_state(opt))
    with torch.no_grad():
        param.mul_(2.0)  # a later call must not replace the saved state: it comes from before the first
    undo.after_step(opt, copy_step_state(opt))
    calls: list[int] = []
    opt.step()
    assert torch.equal(param.detach(), before[0]) and torch.equal(opt.state[param]["momentum_buffer"], before[1])
    assert not undo.pending
    undo.after_step(opt, None, lambda: calls.append(1))
    undo.flush()  # the step never ran: the pending restore runs now, and its hook is gone
    assert calls == [1] and not undo.pending
    opt.step()
    assert calls == [1] and not torch.equal(param.detach(), before[0])


def test_snapshot_and_buffers_round_trip() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    snap = take_snapshot(model, [opt], step=7)
    saved = copy_buffers(model)
    model(torch.randn(4, 2) * 5).sum().backward()  # moves the BN statistics and, after the step, the weights
    opt.step()
    restore_buffers_(model, saved)
    assert torch.equal(model[1].running_mean, saved[0])
    restore_snapshot(model, [opt], snap)
    assert snap["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap["model"][k]), k
    assert opt.state_dict()["state"][0]["step"] == snap["optimizers"][0]["state"][0]["step"]
    opt.state[model[0].weight]["exp_avg"].add_(1.0)  # the optimizer does not alias the snapshot
    assert not torch.equal(opt.state[model[0].weight]["exp_avg"], snap["optimizers"][0]["state"][0]["exp_avg"])
