"""lit_tricks.fault.atomic: a write lands whole or not at all; the old functional.atomic path still resolves."""

from __future__ import annotations

import importlib
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


def test_old_functional_path_warns_and_returns_the_moved_function() -> None:
    old = importlib.import_module("lit_tricks.functional.atomic")
    with pytest.warns(DeprecationWarning, match="lit_tricks.fault.atomic.atomic_write_bytes"):
        assert old.atomic_write_bytes is atomic.atomic_write_bytes
