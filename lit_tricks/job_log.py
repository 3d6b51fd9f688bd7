"""The log side of one training job: Lightning's lines in Hydra's ``train.log``, the end-of-run summary, the
traceback of a failed job, and the cleanup of a run directory whose config was rejected."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SUMMARY_LOGGER", "attach_hydra_file_log", "log_traceback", "print_summary", "remove_rejected_run_dir"]

#: Logger of the end-of-run summary: printed to stdout and written to the run's train.log.
SUMMARY_LOGGER = "lit_tricks.summary"
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def attach_hydra_file_log() -> None:
    """Send Lightning's log lines (and ours) into Hydra's ``train.log`` too.

    Lightning gives its loggers their own console handler and stops propagation when it is imported before Hydra
    configured logging (always the case here), so Hydra's file handler never sees them.
    """
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in (*_LIGHTNING_LOGGERS, SUMMARY_LOGGER):
        lg = logging.getLogger(name)
        if name != SUMMARY_LOGGER and lg.propagate:
            continue  # Lightning was imported after Hydra set up logging: its lines reach the file already
        for handler in files:
            if handler not in lg.handlers:
                lg.addHandler(handler)
        if name == SUMMARY_LOGGER:
            lg.propagate = False
            lg.setLevel(logging.INFO)


def remove_rejected_run_dir(out: Path, before: Iterable[Path] = ()) -> None:
    """A run rejected before it trained leaves nothing: remove what it wrote into ``out`` (every file not in
    ``before``, e.g. ``config_resolved.yaml`` and the logger files of a monitor refused after the sanity pass), then
    ``out`` itself if only Hydra's files remain."""
    if not out.is_dir():
        return
    kept = set(before)
    for path in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path in kept or path.suffix == ".log":
            continue
        if not path.is_dir():
            path.unlink(missing_ok=True)
        elif not any(path.iterdir()):
            path.rmdir()
    hydra_only = all(p.name in (".hydra",) or p.suffix == ".log" for p in out.iterdir())
    if not hydra_only:
        return
    for lg in (logging.getLogger(), *(logging.getLogger(n) for n in (*_LIGHTNING_LOGGERS, SUMMARY_LOGGER))):
        for handler in list(lg.handlers):  # the job's train.log: closed and detached before its folder goes
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out.resolve():
                lg.removeHandler(handler)
                handler.close()
    shutil.rmtree(out, ignore_errors=True)


def log_traceback(err: BaseException, line: str, name: str = __name__) -> None:
    """The full traceback of ``err`` to the run's log file only (the console gets ``line``, the root cause)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    record = logging.LogRecord(name, logging.ERROR, __file__, 0, "job failed: %s", (line,),
                               (type(err), err, err.__traceback__))
    for handler in files:
        handler.handle(record)


def print_summary(record: dict[str, Any]) -> None:
    """The end-of-run lines (accuracies, objective, checkpoint, run directory) to stdout and ``train.log``."""
    m = record["metrics"]
    files = record.get("checkpoints") or {}
    parts = [f"{k}={m[k]:.4f}" for k in ("val/acc", "val/acc_ema", "test/acc", "test/acc_ema") if k in m]
    lines = ["lit_tricks: " + ("  ".join(parts) or "no accuracy logged"),
             f"lit_tricks: objective {record['monitor']}={record['objective']:.4f} ({record['objective_source']})",
             f"lit_tricks: checkpoint {record.get('best_ckpt') or '(none)'}"
             + (" (EMA weights; evaluated numbers come from this file)" if record.get("evaluated_weights") == "ema"
                and files.get("best_ema") else "")]
    if record.get("evaluated_weights") == "ema" and files.get("best_ema") and files.get("best"):
        lines.append(f"lit_tricks: resume from {files['best']} (raw weights + training state)")
    lines.append(f"lit_tricks: run directory {record.get('run_dir')}")
    summary = logging.getLogger(SUMMARY_LOGGER)
    for line in lines:
        print(line)
        summary.info(line)
