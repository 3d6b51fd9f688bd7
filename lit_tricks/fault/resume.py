"""Resuming a run: the checkpoint to restart from (``resume=auto`` finds the newest intact one of a run directory),
and its CSV log continued in place."""

from __future__ import annotations

import csv
import logging
import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_tricks.fault.atomic import TMP_PREFIX
from lit_tricks.fault.sharded_checkpoint import checkpoint_dir_problem, is_checkpoint_dir, is_training_checkpoint_dir
from lit_tricks.validation import ArgumentError

__all__ = [
    "checkpoint_is_intact", "continue_csv_logs", "find_resume_checkpoint", "is_training_checkpoint",
    "list_checkpoints", "resolve_resume",
]

log = logging.getLogger(__name__)


def checkpoint_is_intact(path: str | os.PathLike[str]) -> str | None:
    """None when ``path`` is a complete ``torch.save`` archive, else the reason it is not (one line).

    ``torch.save`` writes a zip archive with a CRC32 per entry: a truncated file has no central directory and a
    flipped byte fails its CRC, so this catches both without unpickling anything (cost: one read of the file).
    A distributed checkpoint (a directory of shards) is checked by :func:`checkpoint_dir_problem`.
    """
    if is_checkpoint_dir(path):
        return checkpoint_dir_problem(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None if bad is None else f"CRC mismatch in entry {bad}"


def is_training_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a full training state (loops and optimizer states), not only weights.

    Looks for the keys in the archive's pickle stream (``data.pkl``) without unpickling it; weights-only files
    (``save_weights_only=True``, the ``ema-`` twins of EMAWeights) have neither key.
    """
    if is_checkpoint_dir(path):
        return is_training_checkpoint_dir(path)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return False
            head = archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False
    return b"loops" in head and b"optimizer_states" in head


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``*.ckpt`` file or distributed-checkpoint directory under ``run_dir`` (recursively, temp files and
    directories of unfinished writes excluded), newest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*.ckpt") if not any(s.startswith(TMP_PREFIX) for s in p.relative_to(root).parts)
             and (p.is_file() or is_checkpoint_dir(p))]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def find_resume_checkpoint(
    run_dir: str | os.PathLike[str], exclude: Iterable[str] = (), warn: bool = True
) -> str | None:
    """The newest intact training checkpoint in ``run_dir`` (``last.ckpt``, interval, preemption, ``hpc_ckpt_*``).

    Newest = latest modification time (ties prefer ``last.ckpt``); corrupt or truncated files are skipped with a
    warning, weights-only files silently. Returns None when there is none (a fresh start). ``exclude``: resolved
    paths to skip.
    """
    skip = {str(Path(p).resolve()) for p in exclude}
    for path in list_checkpoints(run_dir):
        if str(path.resolve()) in skip:
            continue
        problem = checkpoint_is_intact(path)
        if problem is None:
            if is_training_checkpoint(path):
                return str(path)
            continue
        if warn:
            log.warning("resume: skipping unreadable checkpoint %s (%s)", path, problem)
    return None


def resolve_resume(resume: Any, run_dir: str | os.PathLike[str]) -> str | None:
    """The checkpoint a run resumes from: ``resume`` is null (fresh start), ``"auto"`` (the newest good checkpoint
    of ``run_dir``, or a fresh start) or a ``.ckpt`` path (``ArgumentError`` when it is not a file: the run reports
    a rejected config)."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        found = find_resume_checkpoint(run_dir)
        log.info("resume=auto: %s", found or "no checkpoint found, starting fresh")
        return found
    if not Path(str(resume)).is_file():
        raise ArgumentError("resume", resume, "names no checkpoint file; pass a .ckpt path, 'auto' or null")
    return str(resume)


def _latest_version(root: Path) -> int | None:
    versions = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(versions) if versions else None


def continue_csv_logs(loggers: Iterable[Any], resume_ckpt: str | None) -> None:
    """After a resume, keep writing each unpinned CSVLogger's newest ``version_N`` (its rows up to the checkpoint
    kept), so ``metrics.csv`` holds every epoch of the run.

    Lightning has no append mode: its CSV writer deletes an existing ``metrics.csv`` of its version when it is created
    (``_ExperimentWriter._check_log_dir_exists``), and a new version would split the run's curves over two files. So
    the rows logged before the checkpoint are read first and written back under the writer's header: as many rows as
    the checkpoint says were written (:class:`~lit_tricks.callbacks.RNGState` records it), else those of earlier
    steps. ``resume_ckpt=None`` (``resume=auto`` killed before its first checkpoint) starts that version afresh.
    """
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from lit_tricks.compat import csv_logger_version, pin_csv_logger_version
    from lit_tricks.fault.exact_resume import CSV_ROWS_KEY

    ckpt = torch.load(resume_ckpt, map_location="cpu", weights_only=True, mmap=True) if resume_ckpt else {}
    step, counts = int(ckpt.get("global_step", 0)), ckpt.get(CSV_ROWS_KEY) or {}
    for lg in loggers:
        if not isinstance(lg, CSVLogger) or csv_logger_version(lg) is not None:
            continue
        version = _latest_version(Path(lg.root_dir))
        if version is None:
            continue
        pin_csv_logger_version(lg, version)
        path = Path(lg.log_dir) / "metrics.csv"
        rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            kept = counts.get(f"{lg.name}/version_{version}")  # rows written when the checkpoint was (RNGState)
            earlier = [r for r in rows if not r.get("step") or float(r["step"]) < step]  # a checkpoint without it
            rows = rows[:kept] if kept is not None else earlier
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = lg.experiment  # deletes the old metrics.csv
        if rows:
            writer.metrics_keys = sorted({k for r in rows for k in r})
            with path.open("w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
