"""AtomicCheckpointIO: a Lightning CheckpointIO plugin whose checkpoint writes are all-or-nothing.

``Trainer(plugins=[AtomicCheckpointIO()])``. Lightning's default ``TorchCheckpointIO`` writes through an fsspec
transaction whose temp file lives in ``$TMPDIR``; when that is another filesystem than the checkpoint directory the
final move falls back to copy + unlink, so a kill during the copy leaves a truncated ``last.ckpt`` (and an orphan temp
file in ``$TMPDIR``), and nothing is fsynced. Here the bytes go to a temp file beside the target (same filesystem),
are flushed and fsynced, and ``os.replace`` swaps them in (:func:`lit_tricks.fault.atomic.atomic_open`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_tricks.compat import CheckpointPath
from lit_tricks.fault.atomic import TMP_PREFIX, atomic_open

__all__ = [
    "AtomicCheckpointIO", "CorruptCheckpointError", "clean_stale_temp_files", "corrupt_message", "is_remote_path",
]

log = logging.getLogger(__name__)

#: Errors ``torch.load`` raises on a truncated or corrupted file.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, OSError,
)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated or corrupted)."""


def is_remote_path(path: CheckpointPath) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def clean_stale_temp_files(directory: CheckpointPath, min_age_s: float = 0.0) -> list[str]:
    """Delete the ``.tmp-*`` files an interrupted atomic write left in ``directory``; returns the removed paths.

    ``min_age_s``: only remove temp files older than this (protects a concurrent writer in the same directory).
    """
    folder = Path(str(directory))
    if not folder.is_dir():
        return []
    removed: list[str] = []
    now = time.time()
    for tmp in folder.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_file() and now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(str(tmp))
    if removed:
        log.warning("removed %d stale temp file(s) of interrupted checkpoint writes in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that leave the old file or the whole new one, never a part; clear errors on bad reads.

    ``clean_on_start``: before the first write into a directory, delete the ``.tmp-*`` files an earlier crash left
    there (only one process writes a directory: rank 0). Remote (URL) paths go to Lightning's fsspec writer.
    """

    def __init__(self, clean_on_start: bool = True) -> None:
        super().__init__()
        self.clean_on_start = clean_on_start
        self._cleaned: set[str] = set()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any | None = None
    ) -> None:
        """Serialize ``checkpoint`` in memory, then write it atomically to ``path``."""
        if storage_options is not None:
            raise TypeError(
                f"storage_options: not supported by {type(self).__name__} (local atomic writes), "
                f"got {storage_options!r}"
            )
        if is_remote_path(path):
            super().save_checkpoint(checkpoint, path)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = Path(str(path))
        self._clean_once(target.parent)
        with atomic_open(target) as fh:
            self.write_bytes(fh, buffer.getbuffer())

    def write_bytes(self, fh: IO[bytes], data: memoryview) -> None:
        """Write the serialized checkpoint into the open temp file (an overridable seam, e.g. for fault injection)."""
        fh.write(data)

    def load_checkpoint(
        self,
        path: CheckpointPath,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """``torch.load`` the checkpoint; a truncated/corrupted file raises one line naming the last good one."""
        if is_remote_path(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if not Path(str(path)).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except LOAD_ERRORS as err:
            if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
                raise  # a readable file holding objects weights_only refuses: not corruption
            raise CorruptCheckpointError(corrupt_message(path, err)) from err

    def remove_checkpoint(self, path: CheckpointPath) -> None:
        """Delete a checkpoint file (also when it is a link, as ModelCheckpoint's ``save_last="link"`` makes)."""
        if not is_remote_path(path) and os.path.islink(str(path)):
            os.unlink(str(path))
            return
        super().remove_checkpoint(path)

    def _clean_once(self, directory: Path) -> None:
        key = str(directory.resolve())
        if self.clean_on_start and key not in self._cleaned:
            clean_stale_temp_files(directory)
            self._cleaned.add(key)


def corrupt_message(path: CheckpointPath, err: BaseException) -> str:
    """One line: which file is unreadable, why, and the newest loadable checkpoint beside it."""
    from lit_tricks.fault.resume import find_resume_checkpoint

    folder = Path(str(path)).resolve().parent
    good = find_resume_checkpoint(folder, exclude=(str(Path(str(path)).resolve()),), warn=False)
    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    hint = f"last good checkpoint: {good}" if good else f"no loadable checkpoint in {folder}"
    return f"checkpoint {path} is truncated or corrupted ({reason}); {hint}"
