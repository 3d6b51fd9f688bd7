"""lit_tricks.fault.atomic: a write lands whole or not at all; nothing else of it is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_tricks.fault import atomic


def test_atomic_write_bytes_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    atomic.atomic_write_bytes(b"new contents", target)
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as fh:
        fh.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert not any(p.name.startswith(atomic.TMP_PREFIX) for p in tmp_path.iterdir())
