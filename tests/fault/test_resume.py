"""find_resume_checkpoint: newest intact training checkpoint; corrupt ones skipped with a warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from lit_tricks.fault.resume import checkpoint_is_intact, find_resume_checkpoint, is_training_checkpoint


def _save(path: Path, mtime: int, training: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": {"w": torch.ones(3)}}
    if training:
        payload.update(loops={"fit_loop": {}}, optimizer_states=[{}])
    torch.save(payload, path)
    os.utime(path, (mtime, mtime))


def test_picks_the_newest_intact_training_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert find_resume_checkpoint(tmp_path) is None
    assert find_resume_checkpoint(tmp_path / "missing") is None
    _save(tmp_path / "checkpoints" / "epoch=0-step=5.ckpt", 100)
    _save(tmp_path / "checkpoints" / "last.ckpt", 200)
    _save(tmp_path / "checkpoints" / "ema-last.ckpt", 300, training=False)  # weights only: not resumable
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    # a newer but truncated file is skipped with a warning
    newer = tmp_path / "checkpoints" / "last-preempted.ckpt"
    newer.write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes()[:200])
    os.utime(newer, (400, 400))
    (tmp_path / "checkpoints" / ".tmp-last.ckpt.xyz").write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="lit_tricks.fault.resume"):
        assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert "last-preempted.ckpt" in caplog.text


def test_intact_check_catches_a_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "loops": {}, "optimizer_states": []}, path)
    assert checkpoint_is_intact(path) is None and is_training_checkpoint(path)
    data = bytearray(path.read_bytes())
    index = data.find(b"\x00\x00\x80\x3f")  # float32 1.0 inside the tensor's storage
    data[index + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert checkpoint_is_intact(path) is not None
