"""Callback state held as DTensor shards (Lightning's ``ModelParallelStrategy``, FSDP2): saved by every rank beside
each distributed checkpoint, loaded and re-sharded on resume. The base of the EMA's
:class:`~lit_tricks.fault.ema_shards.ShardedEMACheckpoints` and of :class:`~lit_tricks.callbacks.PostHocEMA`.

With ``save_distributed_checkpoint=True`` (directory ``X.ckpt/``) every rank writes its shards of
:meth:`ShardedCallbackState.sharded_state` with ``torch.distributed.checkpoint`` into ``X.ckpt/<shards_dir>/``
(:meth:`~ShardedCallbackState.write_beside`, called by :class:`~lit_tricks.fault.sharded_checkpoint.ShardedSaves`
before the directory is swapped in), and the callback state in ``meta.pt`` names that folder; on resume the shards
are loaded into the re-created tensors (:meth:`~ShardedCallbackState.load_pending_shards`, a collective), whatever
the world size that saved them. With ``False`` (one full file written by rank 0) the callback gathers its tensors
into its state instead (a collective every rank enters while the checkpoint is dumped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import Strategy

from lit_tricks.compat import saves_distributed_checkpoint
from lit_tricks.fault.sharded_checkpoint import ShardedSaves, load_shards_, save_shards

__all__ = ["ShardedCallbackState"]


class ShardedCallbackState:
    """A :class:`~lit_tricks.fault.sharded_checkpoint.SaveListener` saving and loading one callback's sharded
    tensors (see module doc). Subclasses name the tensors (:meth:`sharded_state`) and the folder
    (:attr:`shards_dir`); :meth:`attach_saves` / :meth:`detach_saves` go from ``setup`` to ``teardown``."""

    def __init__(self) -> None:
        self._saves: ShardedSaves | None = None  # installed on a ModelParallelStrategy from setup to teardown
        self._loaded_dir: Path | None = None  # the distributed checkpoint the strategy loaded last
        self._shards_pending: str | None = None  # the folder in it whose shards the next bind loads

    @property
    def shards_dir(self) -> str:
        """The folder of a distributed checkpoint that holds this callback's shards."""
        raise NotImplementedError

    def sharded_state(self) -> dict[str, Any]:
        """The live tensors (DTensors, nested in dicts) written beside a distributed checkpoint and loaded into on
        resume; empty when there is nothing to save yet."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state entries
    def distributed(self) -> bool:
        """Whether checkpoints are directories of shards (the callback state then holds no tensors)."""
        return self._saves is not None and saves_distributed_checkpoint(self._saves.strategy)

    def gathers(self) -> bool:
        """Whether the callback state holds gathered full tensors (a full-file checkpoint of a sharded model)."""
        return self._saves is not None and not self.distributed()

    def expect_shards(self, folder: str | None) -> None:
        """A loaded callback state named ``folder`` (None: none): :meth:`load_pending_shards` reads it."""
        self._shards_pending = folder

    def load_pending_shards(self) -> None:
        """Load the shards a restored state named into :meth:`sharded_state`'s tensors (re-sharded by DCP: a
        collective every rank enters); nothing when none are pending."""
        if self._shards_pending is None:
            return
        if self._loaded_dir is None:
            raise RuntimeError(f"{type(self).__name__}: the callback state names sharded tensors, but no distributed "
                               "checkpoint was loaded through ModelParallelStrategy; resume from its directory")
        load_shards_(self.sharded_state(), self._loaded_dir / self._shards_pending)
        self._shards_pending = None

    # ------------------------------------------------------------------ the strategy's saves (every rank)
    def attach_saves(self, strategy: Strategy) -> None:
        self._saves = ShardedSaves.of(strategy)
        self._saves.add(self)

    def detach_saves(self) -> None:
        if self._saves is not None:
            self._saves.discard(self)
        self._saves = None

    def before_save(self, checkpoint: dict[str, Any]) -> None:
        """Called on every rank before each save."""

    def write_beside(self, directory: Path) -> None:
        """Write this rank's shards into the distributed checkpoint being written."""
        state = self.sharded_state()
        if state:
            save_shards(state, directory / self.shards_dir)

    def after_save(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Called on every rank after each save."""

    def after_remove(self, path: Path) -> None:
        """Called on rank 0 after a checkpoint was removed."""

    def after_load(self, path: Path) -> None:
        self._loaded_dir = path if path.is_dir() else None
