"""The metrics.json schema: one versioned layout, validated; the error chain keeps the root cause."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from hydra.utils import instantiate

from lit_tricks.records import (
    FIELDS,
    SCHEMA_VERSION,
    error_chain,
    new_record,
    read_record,
    root_error,
    validate_record,
    write_record,
)


def _instantiation_error() -> BaseException:
    try:
        instantiate({"_target_": "lit_tricks.callbacks.ema.EMAWeights", "decay": 1.5})
    except Exception as err:
        return err
    raise AssertionError("EMAWeights(decay=1.5) was accepted")


def test_root_error_of_an_instantiation_exception_is_the_constructors_value_error() -> None:
    err = _instantiation_error()
    assert type(err).__name__ == "InstantiationException"
    root = root_error(err)
    assert root.startswith("ArgumentError: ") and "decay" in root and "1.5" in root  # a ValueError subclass
    chain = error_chain(err)
    assert chain[0].startswith("InstantiationException: Error in call to target")
    assert chain[-1] == root and len(chain) >= 2
    assert all("\n" not in line for line in chain)


def test_context_chain_is_followed_when_no_explicit_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise RuntimeError("outer\nsecond line") from None
    except RuntimeError as err:
        assert error_chain(err) == ["RuntimeError: outer"]  # `from None` hides the context
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise RuntimeError("outer")  # noqa: B904 - the implicit context is what is tested
    except RuntimeError as err:
        assert error_chain(err) == ["RuntimeError: outer", "KeyError: 'inner'"]


def test_a_full_record_validates_and_every_field_is_known() -> None:
    record = new_record("val/loss", "min", objective=0.25, objective_source="best_checkpoint",
                        metrics={"val/loss": 0.3, "test/acc": 0.9}, best_ckpt="/x/ema-epoch001.ckpt",
                        reproduced_by={"objective": "/x/ema-epoch001.ckpt"}, world_size=2, num_nodes=1)
    assert record["schema_version"] == SCHEMA_VERSION
    assert validate_record(record) == []
    assert set(record) == set(FIELDS)
    pruned = new_record("val/acc", "max", status="pruned", pruned_at={"epoch": 3, "step": 48, "value": 0.5})
    assert validate_record(pruned) == []


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"status": "done"}, "status='done'"),
        ({"objective": math.nan}, "finite objective"),
        ({"status": "failed", "error": None}, "names its error"),
        ({"monitor_mode": "maximize"}, "monitor_mode='maximize'"),
        ({"world_size": "2"}, "world_size='2'"),
        ({"metrics": {"val/acc": "high"}}, "non-numeric"),
        ({"new_key": 1}, "unknown keys ['new_key']"),
        ({"monitor": None}, "monitor: missing"),
    ],
)
def test_invalid_records_are_named(changes: dict[str, object], needle: str) -> None:
    record = {**new_record("val/loss", "min", objective=0.1), **changes}
    problems = validate_record(record)
    assert any(needle in p for p in problems), problems


def test_write_is_strict_json_and_read_fills_old_layouts(tmp_path: Path) -> None:
    record = new_record("val/loss", "min", status="failed", error="ValueError: x", objective=math.nan)
    path = write_record(tmp_path / "metrics.json", record)
    data = json.loads(path.read_text())  # strict: nan became null
    assert data["objective"] is None and data["status"] == "failed"
    (tmp_path / "old.json").write_text(json.dumps({"status": "ok", "objective": 1.0, "monitor": "val/acc"}))
    old = read_record(tmp_path / "old.json")
    assert old["schema_version"] == 0 and old["objective"] == 1.0 and old["error_chain"] is None


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = write_record(tmp_path / "metrics.json", new_record("val/loss", "min", objective=0.1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
