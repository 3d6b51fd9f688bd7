"""EnsembleMembers without a Trainer: capture/share/drop, the top-k rule, state round trip, folders, the soup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lit_tricks.functional.ensemble import average_state_dicts
from lit_tricks.functional.ensemble_members import EnsembleMembers, cpu_state, top_k_decision


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), v)}


def test_capture_shares_equal_weights_and_drop_removes_the_last_tag(tmp_path: Path) -> None:
    store = EnsembleMembers()
    a, write = store.capture(_state(1.0), "epoch", None, epoch=0, step=8, folder=tmp_path)
    assert write and a["path"] == str(tmp_path / "member-epoch000-step000008.pt")
    torch.save({"state_dict": _state(1.0)}, a["path"])  # what the callback writes
    same, write = store.capture(_state(1.0), "top_k", 0.5, epoch=0, step=8, folder=tmp_path)
    assert same is a and not write and a["tags"] == ["epoch", "top_k"] and a["score"] == 0.5
    other, write = store.capture(_state(2.0), "top_k", 0.4, epoch=0, step=8, folder=tmp_path)  # e.g. EMA weights
    assert other is not a and write and other["path"].endswith("-1.pt")
    assert not store.drop_tag(a, "top_k") and store.drop_tag(a, "epoch") and store.paths() == [other["path"]]


def test_top_k_entry_follows_the_top_k_rule_and_orders() -> None:
    store = EnsembleMembers(keep_inline=True)
    kept: list[float] = []
    for epoch, score in enumerate([3.0, 1.0, float("nan"), 2.0, 0.5]):
        enters, drop, stored, order = store.top_k_entry(score, 2, "min")
        assert (enters, stored) == top_k_decision(kept, score, 2, "min")[::2]
        if not enters:
            continue
        if drop is not None:
            kept.remove(drop["score"])
            store.drop_tag(drop, "top_k")
        record, write = store.capture(_state(float(epoch)), "top_k", stored, epoch, epoch, None)
        record["top_k_order"] = order
        kept.append(stored)
        assert not write and record["path"].startswith("inline:")
    assert sorted(m["score"] for m in store.records) == [0.5, 1.0] and set(store.inline) == set(store.paths())


def test_state_round_trip_is_in_place_and_plain() -> None:
    store = EnsembleMembers(["given.ckpt"], keep_inline=True)
    store.capture(_state(1.0), "epoch", None, 1, 10, None)
    records, inline = store.records, store.inline
    other = EnsembleMembers(keep_inline=True)
    aliases = (other.records, other.inline)
    other.load_state_dict(store.state_dict())
    assert (other.records, other.inline) == (records, inline) and aliases == (other.records, other.inline)
    assert other.records is aliases[0] and other.inline is aliases[1]


def test_member_folder_versions_and_checkpoint_top_k(tmp_path: Path) -> None:
    store = EnsembleMembers()
    assert store.member_folder(tmp_path) == tmp_path / "ensemble"
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "member-epoch000-step000001.pt").write_bytes(b"")  # another run's
    assert store.member_folder(tmp_path) == tmp_path / "ensemble-v1"
    store.capture(_state(1.0), "epoch", None, 0, 1, tmp_path / "mine")
    assert store.member_folder(tmp_path) == tmp_path / "mine"  # a resumed run keeps its folder
    store.use_checkpoint_top_k({"a.ckpt": torch.tensor(0.3), "b.ckpt": torch.tensor(0.1), "c.ckpt": 0.2}, 2, "min")
    assert [m["path"] for m in store.records if "checkpoint_top_k" in m["tags"]] == ["b.ckpt", "c.ckpt"]


def test_average_and_modules_from_inline_members() -> None:
    torch.manual_seed(0)
    template = nn.Sequential(nn.Linear(3, 2))
    store = EnsembleMembers(keep_inline=True)
    with pytest.raises(ValueError, match="no members"):
        store.as_modules(template)
    states = []
    for k in range(3):
        with torch.no_grad():
            template[0].weight.add_(1.0)
        states.append(cpu_state(template))
        store.capture(states[-1], "epoch", None, k, k, None)
    soup = store.average(template)
    for key, value in average_state_dicts(states).items():
        assert torch.equal(soup.state_dict()[key], value)
    members = store.as_modules(template)
    assert len(members) == 3 and not members[0].training and not members[0][0].weight.requires_grad
    x = torch.randn(4, 3)
    probs = store.ensemble(template, "mean_prob", use_vmap=False)(x)
    torch.testing.assert_close(probs, torch.stack([m(x).softmax(-1) for m in members]).mean(0))
