"""Crash-safe file writes: temp file in the same directory, flush + fsync, ``os.replace``.

Imports torch only in :func:`atomic_torch_save`: the config checks import this module (through
:mod:`lit_tricks.migrate`) before anything needs torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TMP_PREFIX", "atomic_open", "atomic_save_figure", "atomic_torch_save", "atomic_write_bytes", "current_umask",
]

TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and put back (a brief window for other threads creating files)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary writing so that readers see the old file or the whole new one, never a part.

    The data goes to a temp file beside ``path`` (same filesystem, whatever ``$TMPDIR`` is), is flushed and
    fsynced, then renamed over ``path`` with ``os.replace``; the directory is fsynced too. The file gets the
    permissions a plain ``open(path, "wb")`` would give (0o666 minus the umask), not mkstemp's 0o600. On any error the
    temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        # mkstemp creates 0600 whatever the umask; give the file the mode open() would (0644 under umask 022)
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)``, atomically: serialized in memory first, then written by :func:`atomic_open`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG in memory, write it with :func:`atomic_write_bytes`, close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    import matplotlib.pyplot as plt  # only reached with a figure in hand, so matplotlib is installed

    plt.close(fig)
    out = Path(path)
    atomic_write_bytes(buffer.getvalue(), out)
    return out
