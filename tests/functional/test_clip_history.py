"""ClipHistory without a Trainer: the ring against a plain list, per-optimizer counters, state round trips."""

from __future__ import annotations

import pytest
import torch

from lit_tricks.functional.clip_history import ClipHistory


def test_ring_keeps_the_last_norms_oldest_first_and_counts_clipped_steps() -> None:
    hist = ClipHistory(history=3)
    seen: list[float] = []
    for k, norm in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        hist.push(torch.tensor(norm))
        hist.count(torch.tensor(k % 2 == 0))
        seen.append(norm)
        assert hist.filled().tolist() == seen[-3:]
    assert hist.steps == 5 and float(hist.clipped_steps) == 3.0 and float(hist.clipped_fraction) == pytest.approx(0.6)


def test_optimizers_keep_their_own_history_and_state_round_trips() -> None:
    hist = ClipHistory(history=2)
    hist.push(torch.tensor(1.0))
    hist.count(torch.tensor(True))
    hist.select(1)
    assert hist.steps == 0 and float(hist.clipped_steps) == 0.0  # a fresh set for optimizer 1
    hist.push(torch.tensor(7.0))
    hist.count(torch.tensor(False))
    state = hist.state_dict()
    assert state["steps"] == 1 and state["per_optimizer"][1]["steps"] == 1 and hist.current == 1
    other = ClipHistory(history=2)
    other.load_state_dict(state)
    assert other.current == 0 and other.filled().tolist() == [1.0]
    other.select(1)
    assert other.filled().tolist() == [7.0] and float(other.clipped_steps) == 0.0
    shorter = ClipHistory(history=1)
    shorter.load_state_dict({"norm_history": torch.tensor([3.0, 4.0]), "steps": 2, "clipped_steps": 1.0})  # v1
    assert shorter.filled().tolist() == [4.0] and shorter.steps == 2  # the newest norm
    with pytest.raises(ValueError, match="history"):
        ClipHistory(history=0)


@pytest.mark.parametrize("pushed", [0, 2, 5, 7, 12])
@pytest.mark.parametrize("new_history", [1, 3, 5, 9])
def test_a_resized_ring_keeps_the_newest_norms_and_invents_none(pushed: int, new_history: int) -> None:
    """The oracle is a plain list of every pushed norm: after a reload with another ``history`` the ring holds its
    last ``min(pushed, 5, new_history)`` values oldest first, and the pushes after it continue that list."""
    hist, seen = ClipHistory(history=5), []
    for k in range(pushed):
        hist.push(torch.tensor(float(k + 1)))
        hist.count(torch.tensor(False))
        seen.append(float(k + 1))
    resized = ClipHistory(history=new_history)
    resized.load_state_dict(hist.state_dict())
    kept = seen[-min(5, new_history):] if seen else []
    assert resized.filled().tolist() == kept and resized.steps == pushed
    for k in range(3):  # the ring goes on from the kept norms: no zero, none lost out of order
        resized.push(torch.tensor(100.0 + k))
        resized.count(torch.tensor(True))
        kept = [*kept, 100.0 + k][-new_history:]
        assert resized.filled().tolist() == kept
    assert resized.steps == pushed + 3 and float(resized.clipped_steps) == 3.0


@pytest.mark.parametrize("selected", [0, 1])
def test_a_copy_unpickled_by_torch_multiprocessing_updates_its_own_tensors(selected: int) -> None:
    """ddp_spawn pickles the callbacks to each rank with torch.multiprocessing, which puts CPU tensors in shared
    memory: without private copies, both ranks counted into one counter (a clipped fraction of 2 after 3 steps)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # registers torch's tensor reductions with ForkingPickler

    history = ClipHistory(4)
    history.select(1 - selected)
    history.push(torch.tensor(3.0))
    history.count(torch.tensor(True))
    history.select(selected)
    history.push(torch.tensor(5.0))
    history.count(torch.tensor(True))
    twin = pickle.loads(ForkingPickler.dumps(history))
    for idx in (0, 1):
        twin.select(idx)
        twin.push(torch.tensor(9.0))
        twin.count(torch.tensor(True))
    for idx, first in ((1 - selected, 3.0), (selected, 5.0)):
        history.select(idx)
        assert history.clipped_steps.item() == 1 and history.norm_history.tolist() == [first, 0.0, 0.0, 0.0]
        twin.select(idx)
        assert twin.clipped_steps.item() == 2 and twin.norm_history.tolist() == [first, 9.0, 0.0, 0.0]
