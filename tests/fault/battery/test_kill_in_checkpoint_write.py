"""Battery K: ``kill -9`` after 1000 bytes of a ``last.ckpt`` write, with ``$TMPDIR`` on another filesystem.

With AtomicCheckpointIO the previous ``last.ckpt`` is byte-identical and loads, the torn temp file sits beside it
(never in ``$TMPDIR``) and the restarted run removes it and finishes. The peer test shows plain Lightning: its fsspec
transaction writes the temp file in ``$TMPDIR`` (/dev/shm), the final move becomes copy + unlink across filesystems,
the destination is truncated first, so the kill leaves a 1000-byte ``last.ckpt`` and an orphan temp file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from lit_tricks.fault.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError
from lit_tricks.fault.resume import find_resume_checkpoint
from tests.fault.battery.conftest import load, run_driver

SHM = Path("/dev/shm")
KILL_STEP, AFTER_BYTES = 5, 1000

pytestmark = pytest.mark.skipif(not SHM.is_dir() or os.stat(SHM).st_dev == os.stat("/tmp").st_dev,
                                reason="needs /dev/shm on another filesystem than /tmp")


def _tmpdir(tmp_path: Path) -> Path:
    path = SHM / f"lit_tricks_k_{os.getpid()}_{tmp_path.name}"
    path.mkdir()
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_during_checkpoint_write_keeps_previous_last_ckpt(tmp_path: Path) -> None:
    tmpdir = _tmpdir(tmp_path)
    try:
        args = ["--root", str(tmp_path), "--kill-in-write-at-step", str(KILL_STEP),
                "--kill-after-bytes", str(AFTER_BYTES)]
        run_driver(*args, env={"TMPDIR": str(tmpdir)}, expect=-9)
        ckpt_dir = tmp_path / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        assert _sha(last) == (tmp_path / "last_before.sha256").read_text(), "last.ckpt changed"
        assert torch.load(last, weights_only=True)["global_step"] == KILL_STEP - 1
        torn = list(ckpt_dir.glob(".tmp-*"))
        assert len(torn) == 1 and torn[0].stat().st_size == AFTER_BYTES, "the torn write stays beside the target"
        assert [p.name for p in tmpdir.iterdir() if p.is_file()] == [], "nothing written to $TMPDIR"
        assert find_resume_checkpoint(tmp_path) is not None
        # restart: resume=auto picks an intact checkpoint, cleans the stale temp file, trains on
        run_driver("--root", str(tmp_path), "--resume", "auto", "--max-epochs", "1", "--out",
                   str(tmp_path / "result.pt"), env={"TMPDIR": str(tmpdir)})
        resumed = load(tmp_path / "result.pt")
        # the newest intact training checkpoint is step 5's interval file, written completely just before
        assert resumed["resumed_from"].endswith("epoch=0-step=5.ckpt")
        assert resumed["records"][0]["step"] == KILL_STEP + 1 and resumed["global_step"] == 6
        assert list(ckpt_dir.glob(".tmp-*")) == []
    finally:
        for p in tmpdir.rglob("*"):
            if p.is_file():
                p.unlink()
        for p in sorted(tmpdir.rglob("*"), reverse=True):
            p.rmdir()
        tmpdir.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_plain_lightning_kill_during_write_truncates_last_ckpt(tmp_path: Path) -> None:
    """Not an xfail: this asserts the damage, and that AtomicCheckpointIO names the file and the last good one."""
    tmpdir = _tmpdir(tmp_path)
    try:
        run_driver("--root", str(tmp_path), "--plain", "--kill-in-write-at-step", str(KILL_STEP),
                   "--kill-after-bytes", str(AFTER_BYTES), env={"TMPDIR": str(tmpdir)}, expect=-9)
        last = tmp_path / "checkpoints" / "last.ckpt"
        assert last.stat().st_size == AFTER_BYTES, "plain Lightning truncated last.ckpt"
        assert _sha(last) != (tmp_path / "last_before.sha256").read_text()
        assert [p for p in tmpdir.iterdir() if p.is_file()], "plain Lightning leaves its temp file in $TMPDIR"
        with pytest.raises(CorruptCheckpointError) as err:
            AtomicCheckpointIO().load_checkpoint(last)
        message = str(err.value)
        assert "\n" not in message and str(last) in message and "epoch=0-step=5.ckpt" in message
        assert find_resume_checkpoint(tmp_path).endswith("epoch=0-step=5.ckpt")  # type: ignore[union-attr]
    finally:
        for p in tmpdir.rglob("*"):
            if p.is_file():
                p.unlink()
        for p in sorted(tmpdir.rglob("*"), reverse=True):
            p.rmdir()
        tmpdir.rmdir()
