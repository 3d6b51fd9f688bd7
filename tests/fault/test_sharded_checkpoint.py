"""Distributed-checkpoint directories without a process group: swapping a complete directory in, telling a training
checkpoint from a weights-only one, and the install/uninstall of ShardedSaves on a strategy (the saves themselves
run on 2 ranks in tests/matrix/test_sharded.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_tricks.fault.resume import is_training_checkpoint, list_checkpoints
from lit_tricks.fault.sharded_checkpoint import META_FILE, ShardedSaves, is_checkpoint_dir


def _dir(path: Path, meta: dict) -> Path:
    path.mkdir(parents=True)
    torch.save(meta, path / META_FILE)
    (path / "__0_0.distcp").write_bytes(b"shard")
    return path


def test_replace_directory_swaps_a_whole_directory_over_a_directory_or_a_file(tmp_path: Path) -> None:
    target = _dir(tmp_path / "last.ckpt", {"loops": {}, "epoch": 0})
    new = _dir(tmp_path / ".tmp-last.ckpt", {"loops": {}, "epoch": 1})
    ShardedSaves.replace_directory(new, target)
    assert torch.load(target / META_FILE, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # nothing of the old one or the temp left
    single = tmp_path / "one.ckpt"
    torch.save({"state_dict": {}}, single)  # a full-file checkpoint of the same name, replaced by a directory
    ShardedSaves.replace_directory(_dir(tmp_path / ".tmp-one.ckpt", {"epoch": 2}), single)
    assert is_checkpoint_dir(single)


def test_resume_lists_directories_and_tells_training_ones_from_weights_only(tmp_path: Path) -> None:
    training = _dir(tmp_path / "ckpt" / "last.ckpt", {"loops": {"fit_loop": {}}, "callbacks": {}})
    twin = _dir(tmp_path / "ckpt" / "ema-last.ckpt", {"state_dict": None, "lit_tricks_ema": {}})
    _dir(tmp_path / "ckpt" / ".tmp-last.ckpt", {"loops": {}})  # an unfinished write
    (tmp_path / "ckpt" / "not-a-checkpoint.ckpt").mkdir()  # no meta.pt
    assert sorted(p.name for p in list_checkpoints(tmp_path)) == ["ema-last.ckpt", "last.ckpt"]
    assert is_training_checkpoint(training) and not is_training_checkpoint(twin)


def test_sharded_saves_install_once_and_give_the_strategy_its_methods_back() -> None:
    strategy = ModelParallelStrategy()
    own = strategy.save_checkpoint
    saves = ShardedSaves.of(strategy)
    assert ShardedSaves.of(strategy) is saves and strategy.save_checkpoint == saves.save
    listener = object()
    saves.add(listener)  # type: ignore[arg-type]
    saves.discard(listener)  # type: ignore[arg-type]
    assert strategy.save_checkpoint == own and ShardedSaves.of(strategy) is not saves
