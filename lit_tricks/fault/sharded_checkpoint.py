"""Checkpoints of sharded models (Lightning's ``ModelParallelStrategy``, FSDP2): atomic directory writes, parts
written beside the shards, and the intact check resume discovery uses.

With ``save_distributed_checkpoint=True`` (its default) the strategy writes ``X.ckpt`` as a *directory*: every rank
its shards through ``torch.distributed.checkpoint`` (DCP: ``*.distcp`` files and a ``.metadata`` index) and rank 0
the rest of the checkpoint (loops, callback states) in ``meta.pt``; no CheckpointIO plugin is called. It writes into
the existing directory, so a kill during a save leaves new shards beside the old index. :class:`ShardedSaves` wraps
the strategy's ``save_checkpoint`` (on one strategy instance) so that the directory is written under a temp name
beside it, completed by its listeners (e.g. the EMA's shards), and swapped in by renames; with ``False`` the
strategy writes one full file through CheckpointIO (rank 0), and the listeners are told before and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.strategies import Strategy

from lit_tricks.compat import saves_distributed_checkpoint
from lit_tricks.fault.atomic import TMP_PREFIX

__all__ = [
    "META_FILE", "SaveListener", "ShardedSaves", "checkpoint_dir_problem", "is_checkpoint_dir",
    "is_training_checkpoint_dir", "load_shards_", "save_shards",
]

#: The file of a distributed checkpoint holding everything but the shards (``lightning.fabric``'s name for it).
META_FILE = "meta.pt"
_DCP_INDEX = ".metadata"


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a distributed (sharded) checkpoint: a directory with ``meta.pt`` (Lightning's test)."""
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def checkpoint_dir_problem(path: str | os.PathLike[str]) -> str | None:
    """None when the distributed checkpoint ``path`` is complete, else why not (one line): ``meta.pt`` must be an
    intact archive, the DCP index must load, and every shard file it names must hold the bytes it points to."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = Path(path)
    try:
        with zipfile.ZipFile(folder / META_FILE) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"CRC mismatch in {META_FILE} entry {bad}"
        metadata = FileSystemReader(str(folder)).read_metadata()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    for item in (metadata.storage_data or {}).values():
        shard = folder / item.relative_path
        if not shard.is_file() or shard.stat().st_size < item.offset + item.length:
            return f"shard file {item.relative_path} is missing or truncated"
    return None


def is_training_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Whether the distributed checkpoint ``path`` holds a training state (``loops`` in ``meta.pt``), not only
    weights (``save_weights_only``, the ``ema-`` twins)."""
    try:
        with zipfile.ZipFile(Path(path) / META_FILE) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            return name is not None and b"loops" in archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def save_shards(state: dict[str, Any], directory: Path) -> None:
    """Write ``state`` (DTensors and plain tensors, nested in dicts) with DCP into ``directory``: every rank its own
    shards, replicated tensors once; a collective."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=directory)


def load_shards_(state: dict[str, Any], directory: Path) -> None:
    """Load a :func:`save_shards` directory into the tensors of ``state`` in place, re-sharding to their layout (the
    world size may differ from the one that saved); a collective."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=directory)


class SaveListener(Protocol):
    """What :class:`ShardedSaves` calls on every rank around each save (EMAWeights implements it)."""

    def before_save(self, checkpoint: dict[str, Any]) -> None: ...

    def write_beside(self, directory: Path) -> None: ...

    def after_save(self, checkpoint: dict[str, Any], path: Path) -> None: ...

    def after_remove(self, path: Path) -> None: ...

    def after_load(self, path: Path) -> None: ...


_INSTALLED: weakref.WeakKeyDictionary[Strategy, ShardedSaves] = weakref.WeakKeyDictionary()


class ShardedSaves:
    """Atomic directory saves and listeners on one strategy, installed over its ``save_checkpoint``,
    ``remove_checkpoint`` and ``load_checkpoint`` (instance attributes; :meth:`discard` of the last listener puts the
    strategy's own methods back unless ``keep``).

    Save of a distributed checkpoint ``X.ckpt``: listeners' ``before_save`` (every rank), the strategy's save into
    ``.tmp-X.ckpt``, listeners' ``write_beside`` into it, then rank 0 swaps it in (:meth:`replace_directory`) and
    listeners' ``after_save``. A full-file save calls the strategy's save between ``before_save`` and ``after_save``.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.listeners: list[SaveListener] = []
        self.keep = False  # installed by the strategy itself: stays without listeners
        self._save, self._remove, self._load = strategy.save_checkpoint, strategy.remove_checkpoint, \
            strategy.load_checkpoint

    @classmethod
    def of(cls, strategy: Strategy) -> ShardedSaves:
        """The instance installed on ``strategy``, installed now if there is none."""
        saves = _INSTALLED.get(strategy)
        if saves is None:
            saves = _INSTALLED[strategy] = cls(strategy)
            strategy.save_checkpoint = saves.save  # type: ignore[method-assign]
            strategy.remove_checkpoint = saves.remove  # type: ignore[method-assign]
            strategy.load_checkpoint = saves.load  # type: ignore[method-assign]
        return saves

    def add(self, listener: SaveListener) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    def discard(self, listener: SaveListener) -> None:
        """Forget ``listener``; without listeners (and not ``keep``) the strategy gets its own methods back."""
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners and not self.keep and _INSTALLED.get(self.strategy) is self:
            for name in ("save_checkpoint", "remove_checkpoint", "load_checkpoint"):
                vars(self.strategy).pop(name, None)
            del _INSTALLED[self.strategy]

    def save(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        path = Path(self.strategy.broadcast(str(filepath)))
        for listener in self.listeners:
            listener.before_save(checkpoint)
        snapshot = dict(checkpoint)  # the strategy pops state_dict and optimizer_states from a distributed save
        if saves_distributed_checkpoint(self.strategy):
            def write(tmp: Path) -> None:
                self._save(checkpoint, tmp, storage_options)
                for listener in self.listeners:
                    listener.write_beside(tmp)

            self.atomic_directory(path, write)
        else:
            self._save(checkpoint, filepath, storage_options)
        for listener in self.listeners:
            listener.after_save(snapshot, path)

    def remove(self, filepath: Any) -> None:
        self._remove(filepath)
        if self.strategy.is_global_zero:
            for listener in self.listeners:
                listener.after_remove(Path(str(filepath)))

    def load(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = self._load(checkpoint_path, *args, **kwargs)
        for listener in self.listeners:
            listener.after_load(Path(self.strategy.broadcast(str(checkpoint_path))))
        return loaded

    def atomic_directory(self, path: Path, write: Callable[[Path], None]) -> None:
        """Every rank writes its part of the directory ``path`` through ``write(tmp)`` into a temp directory beside
        it; rank 0 then swaps it in. Readers see the old directory or the whole new one (but for the moment between
        the two renames of :meth:`replace_directory`, when ``path`` is absent and resume takes the next newest)."""
        tmp = path.with_name(TMP_PREFIX + path.name)
        if self.strategy.is_global_zero:
            _remove(tmp)
        self.strategy.barrier()
        write(tmp)
        self.strategy.barrier()
        if self.strategy.is_global_zero:
            self.replace_directory(tmp, path)
        self.strategy.barrier()

    @staticmethod
    def replace_directory(tmp: Path, path: Path) -> None:
        """Put the complete directory ``tmp`` at ``path`` (rank 0): the old one (a directory or a file) is renamed
        away, ``tmp`` renamed into place, the old one deleted, the parent directory fsynced."""
        old = path.with_name(TMP_PREFIX + "old-" + path.name)
        _remove(old)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
        with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def save_meta(meta: dict[str, Any], directory: Path, is_global_zero: bool) -> None:
    """Rank 0 writes ``meta`` as the ``meta.pt`` of a distributed checkpoint directory."""
    if is_global_zero:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(meta, directory / META_FILE)
