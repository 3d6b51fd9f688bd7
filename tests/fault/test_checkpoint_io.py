"""AtomicCheckpointIO: all-or-nothing writes, stale temp clean-up, one-line errors on corrupt files."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import pytest
import torch

from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError, clean_stale_temp_files


class _FailingIO(AtomicCheckpointIO):
    def write_bytes(self, fh: IO[bytes], data: memoryview) -> None:
        fh.write(data[:100])
        raise OSError("disk full")


def _ckpt(step: int) -> dict[str, Any]:
    return {"global_step": step, "state_dict": {"w": torch.full((4,), float(step))}}


def test_save_writes_the_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    before = path.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        _FailingIO().save_checkpoint(_ckpt(2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_temp_files_are_removed_before_the_first_write(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-last.ckpt.abc123"
    stale.write_bytes(b"torn")
    other = tmp_path / "notes.txt"
    other.write_text("kept")
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), tmp_path / "last.ckpt")
    assert not stale.exists() and other.exists()
    assert clean_stale_temp_files(tmp_path / "missing") == []


def test_truncated_checkpoint_gives_one_line_naming_the_last_good(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(1), tmp_path / "epoch=0-step=1.ckpt")
    io.save_checkpoint({**_ckpt(2), "loops": {}, "optimizer_states": []}, tmp_path / "epoch=0-step=2.ckpt")
    bad = tmp_path / "last.ckpt"
    bad.write_bytes((tmp_path / "epoch=0-step=2.ckpt").read_bytes()[:300])
    with pytest.raises(CorruptCheckpointError) as err:
        io.load_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "epoch=0-step=2.ckpt" in message
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "nope.ckpt")


def test_storage_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(_ckpt(1), tmp_path / "x.ckpt", storage_options={"a": 1})


def test_trainer_uses_the_plugin_for_its_checkpoints(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

    io = AtomicCheckpointIO()
    trainer = tiny_trainer(tmp_path, max_epochs=1, plugins=[io],
                           callbacks=[ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)])
    assert trainer.strategy.checkpoint_io is io
    trainer.fit(TinyClassifier(), datamodule=BlobsDataModule(n=64))
    assert (tmp_path / "c" / "last.ckpt").is_file() and not list((tmp_path / "c").glob(".tmp-*"))
