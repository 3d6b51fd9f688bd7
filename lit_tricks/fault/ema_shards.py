"""The EMA's checkpoints under sharding (Lightning's ``ModelParallelStrategy``, FSDP2): the base of
:class:`~lit_tricks.fault.ema_checkpoint.EMAStateCallback` that saves, loads and re-shards a shard-local EMA.

Each rank keeps the EMA of its own shards (DTensor clones, :class:`~lit_tricks.functional.ema_state.EMAState`).
The strategy's two checkpoint modes:

- ``save_distributed_checkpoint=True`` (directory ``X.ckpt/``): every rank writes its EMA shards with
  ``torch.distributed.checkpoint`` into ``X.ckpt/ema/`` (inside the directory, written before it is swapped in:
  :class:`~lit_tricks.fault.sharded_checkpoint.ShardedSaves`); the callback state in ``meta.pt`` holds the counters
  and names that folder. The twin ``ema-X.ckpt/`` is a distributed checkpoint of the EMA weights (``state_dict``
  only, no training state), loadable as a model checkpoint by the strategy (``trainer.test(ckpt_path=...)``) or
  consolidated into one file (``python -m lightning.pytorch.utilities.consolidate_checkpoint``).
- ``save_distributed_checkpoint=False`` (one file, written by rank 0): the EMA is gathered into the callback state
  and into the twin file ``ema-X.ckpt``; every rank takes part in the gathering.

Resume re-shards: the shards load into the current layout whatever the world size that saved them (DCP), a full
EMA is cut into this rank's chunks. The twin holds the EMA cast to the model's dtype; the callback state keeps the
shadow's dtype (fp32 for bf16 weights by default), so resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_tricks.fault.sharded_checkpoint import save_meta, save_shards
from lit_tricks.fault.sharded_state import ShardedCallbackState
from lit_tricks.functional.ema_state import EMAState

__all__ = ["EMA_SHARDS_DIR", "ShardedEMACheckpoints"]

#: The folder of a distributed checkpoint that holds the EMA shards.
EMA_SHARDS_DIR = "ema"
#: what a twin drops from the checkpoint: it is for inference or fine-tuning, not for resuming
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "callbacks", "loops")


class ShardedEMACheckpoints(ShardedCallbackState):
    """The EMA's checkpoint side under ``ModelParallelStrategy``: a
    :class:`~lit_tricks.fault.sharded_state.ShardedCallbackState` whose shards are the EMA's, plus the raw weights
    kept in ``state_dict`` and the ``-ema`` twins (see module doc)."""

    state: EMAState
    save_ema_checkpoint: bool

    @property
    def shards_dir(self) -> str:
        return EMA_SHARDS_DIR

    def sharded_state(self) -> dict[str, Any]:
        return {"ema": self.state.ema_state_dict} if self.state.names else {}

    # ------------------------------------------------------------------ callback state
    def ema_entries(self) -> dict[str, Any]:
        """``num_updates`` and the EMA for the callback state: the tensors (gathered under full-file sharding: every
        rank calls this), or, in a distributed checkpoint, the name of the folder holding the shards."""
        if self._saves is None:
            return self.state.state_dict()
        if self.distributed():
            shards = {"ema_shards": EMA_SHARDS_DIR} if self.state.names else {}
            return {"num_updates": self.state.num_updates, "ema": {}, **shards}
        return self.state.state_dict(full=True)

    def load_ema_entries(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`ema_entries`' output; shards are read from the loaded directory at the next :meth:`bind_ema`."""
        self.state.load_state_dict(state_dict)
        self.expect_shards(state_dict.get("ema_shards"))

    def bind_ema(self, module: Any) -> None:
        """Bind the EMA to ``module``'s tensors: create it, or match the loaded one (full tensors cut into this rank's
        chunks, shards re-sharded by DCP: a collective)."""
        self.state.bind(module)
        self.load_pending_shards()

    # ------------------------------------------------------------------ the strategy's saves (every rank)
    def before_save(self, checkpoint: dict[str, Any]) -> None:
        """Keep the raw weights in ``state_dict`` when the EMA is in the model (gathered in a full-file save)."""
        if self.state.swapped and "state_dict" in checkpoint:
            self.state.write_into(checkpoint["state_dict"], raw=True, full=not self.distributed())

    def after_save(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Write the twin of the checkpoint just saved at ``path`` (a directory or a file, as the checkpoint)."""
        if not self.save_ema_checkpoint or self.is_twin(path) or not self.state.names or self._saves is None:
            return
        meta = self.twin_meta()
        if not self.distributed():
            self.write_twin_file(checkpoint, path, lambda sd: self.state.write_into(sd, full=True, model_dtype=True),
                                 meta, self._saves.strategy.is_global_zero)
            return
        weights = dict(checkpoint["state_dict"])
        self.state.write_into(weights, model_dtype=True)
        rest = {k: v for k, v in checkpoint.items() if k not in (*TRAINING_STATE, "state_dict")}
        rest["lit_tricks_ema"] = {**meta, "source": path.name}
        saves = self._saves

        def write(tmp: Path) -> None:
            save_shards({"state_dict": weights}, tmp)
            save_meta(rest, tmp, saves.strategy.is_global_zero)

        saves.atomic_directory(self.twin_path(path), write)

    def after_remove(self, path: Path) -> None:
        """Remove the twin (file or directory) of the checkpoint just removed."""
        self.remove_twin(path)

    # ------------------------------------------------------------------ the twin's name and file (the subclass's)
    def twin_path(self, path: Path) -> Path:
        raise NotImplementedError

    def is_twin(self, path: Path) -> bool:
        raise NotImplementedError

    def remove_twin(self, path: Path) -> None:
        raise NotImplementedError

    def write_twin_file(self, checkpoint: dict[str, Any], path: Path, put_weights: Callable[[dict], None],
                        meta: dict[str, Any], write: bool) -> None:
        raise NotImplementedError

    def twin_meta(self) -> dict[str, Any]:
        """What a twin records under ``lit_tricks_ema`` besides its source."""
        return {"version": 1, "num_updates": self.state.num_updates, "decay": self.state.base_decay,
                "dtype": "model"}
