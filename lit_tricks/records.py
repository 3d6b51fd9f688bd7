"""The ``metrics.json`` record of one run or sweep job: one versioned schema, written by ``lit_tricks.run.train``
and read by the sweep report, the sweep ensemble and the cluster tools.

Every evaluation number in ``metrics`` comes with the file that reproduces it (``reproduced_by``, see
:mod:`lit_tricks.provenance`): with EMA evaluation that is the EMA twin of the checkpoint, not the raw checkpoint
(which is what ``resume`` restarts from); training statistics (``train/loss``, ``lr-*``) name no file. A failed job
keeps the root error and its whole cause chain; a pruned job (a sweeper stopped it early) says so.

Extending the schema: add an optional key with a default to :data:`FIELDS` (old records stay valid) and bump
:data:`SCHEMA_VERSION` only when the meaning of an existing key changes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "error_chain",
    "new_record",
    "previous_record",
    "read_record",
    "root_error",
    "validate_record",
    "write_record",
]

#: Version of the layout below. 1 = the first versioned layout (records without ``schema_version`` are version 0).
SCHEMA_VERSION = 1
#: ok = finished and objective set; failed = raised or was rejected (see ``error``); pruned = stopped by the sweeper.
STATUSES = ("ok", "failed", "pruned")
_NUMBER = (int, float)

#: key -> (accepted types, required). ``None`` is accepted for every optional key.
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True),
    "status": ((str,), True),
    # The value handed to the sweeper: the monitor's value at the best kept checkpoint (``objective_source``).
    "objective": (_NUMBER, False),
    # best_checkpoint | last_epoch (no checkpoint kept) | cv_mean (cross-validation: mean over folds)
    "objective_source": ((str,), False),
    "monitor": ((str,), True),
    "monitor_mode": ((str,), True),
    # Last scalar value of every logged metric (val/*, and test/* from the test of the best checkpoint).
    "metrics": ((dict,), True),
    # metric name (or "objective") -> the checkpoint file whose weights produce that number.
    "reproduced_by": ((dict,), False),
    # The checkpoint files of the run: best (raw weights + training state, what resume uses), best_ema (the EMA
    # twin, EMA weights only), last; absent files are null.
    "checkpoints": ((dict,), False),
    # ema | raw: the weights validation/test used (ema when an EMAWeights callback evaluates with its average).
    "evaluated_weights": ((str,), False),
    # The file that reproduces the objective (= reproduced_by["objective"]); kept for readers of older records.
    "best_ckpt": ((str, list), False),
    # "ExceptionType: message" of the innermost cause (one line) and the whole chain outermost first.
    "error": ((str,), False),
    "error_chain": ((list,), False),
    # pruned jobs: {"epoch": int, "step": int, "value": float} where the sweeper stopped it (epoch 0-based).
    "pruned_at": ((dict,), False),
    # The checkpoint this run resumed from (resume=auto or a path; a sweep trial continuing a preempted one).
    "resumed_from": ((str,), False),
    "overrides": ((list,), False),
    "run_dir": ((str,), False),
    "world_size": ((int,), False),
    "num_nodes": ((int,), False),
    "hostname": ((str,), False),
    # Wall-clock seconds: {"started": unix time, "fit_s", "test_s", "total_s"}.
    "timings": ((dict,), False),
    "interrupted": ((bool,), False),
    # cross-validation: per-fold metrics, and per-fold records' checkpoints.
    "folds": ((list,), False),
    "lit_tricks_version": ((str,), False),
}


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def error_chain(err: BaseException) -> list[str]:
    """One line per exception of ``err``'s cause chain (``__cause__``, else ``__context__``), outermost first."""
    return [_one_line(e) for e in _chain(err)]


def root_error(err: BaseException) -> str:
    """The innermost cause of ``err`` as ``"ExceptionType: first line of its message"``.

    An ``InstantiationException("Error in call to target ...")`` raised from a constructor's ``ValueError`` gives
    the ``ValueError``'s line; wrappers whose message merely repeats the cause are skipped that way too.
    """
    return _one_line(_chain(err)[-1])


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def new_record(monitor: str, monitor_mode: str, **fields: Any) -> dict[str, Any]:
    """A record with every key of the schema (status ok, no objective yet); ``fields`` override the defaults."""
    from lit_tricks import __version__

    record: dict[str, Any] = {key: None for key in FIELDS}
    record.update(
        schema_version=SCHEMA_VERSION, status="ok", monitor=monitor, monitor_mode=monitor_mode, metrics={},
        reproduced_by={}, checkpoints={}, error_chain=[], overrides=[], world_size=1, num_nodes=1,
        hostname=socket.gethostname(), timings={"started": time.time()}, interrupted=False,
        lit_tricks_version=__version__,
    )
    record.update(fields)
    return record


def validate_record(record: Mapping[str, Any]) -> list[str]:
    """Every problem of ``record`` against the schema, one line each (empty = valid)."""
    problems: list[str] = []
    for key, (types, required) in FIELDS.items():
        value = record.get(key)
        if value is None:
            if required:
                problems.append(f"{key}: missing")
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " | ".join(t.__name__ for t in types)
            problems.append(f"{key}={value!r}: must be {names} or null")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        problems.append(f"unknown keys {unknown}: add them to lit_tricks.records.FIELDS")
    if record.get("schema_version") not in (None, SCHEMA_VERSION):
        problems.append(f"schema_version={record.get('schema_version')!r}: this lit_tricks writes {SCHEMA_VERSION}")
    status = record.get("status")
    if status is not None and status not in STATUSES:
        problems.append(f"status={status!r}: must be one of {list(STATUSES)}")
    if record.get("monitor_mode") not in (None, "min", "max"):
        problems.append(f"monitor_mode={record.get('monitor_mode')!r}: must be 'min' or 'max'")
    if status == "ok" and _finite_or_none(record.get("objective")) is None:
        problems.append("objective: an ok record needs a finite objective")
    if status == "failed" and not record.get("error"):
        problems.append("error: a failed record names its error")
    metrics = record.get("metrics") or {}
    if isinstance(metrics, dict):
        bad = [k for k, v in metrics.items() if v is not None and not isinstance(v, _NUMBER)]
        if bad:
            problems.append(f"metrics: non-numeric values for {bad}")
    return problems


def _jsonable(value: Any) -> Any:
    """nan/inf -> null (strict JSON), tuples -> lists, paths -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` as strict JSON (non-finite numbers as null), atomically and readable per the umask."""
    from lit_tricks.fault.atomic import atomic_write_bytes

    out = Path(path)
    text = json.dumps(_jsonable(dict(record)), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(text.encode(), out)
    return out


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``metrics.json``; older layouts are brought to this one (missing keys null, ``schema_version`` 0)."""
    record: dict[str, Any] = json.loads(Path(path).read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{path}: a metrics.json holds a JSON object, got {type(record).__name__}")
    out: dict[str, Any] = {key: None for key in FIELDS}
    out.update(record)
    out["schema_version"] = record.get("schema_version", 0)
    return out


def previous_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record at ``path`` (a resumed run's earlier ``metrics.json``), or {} when it is missing or unreadable."""
    try:
        return read_record(path)
    except (OSError, ValueError):
        return {}
