"""How an EMA reaches checkpoints: raw weights in every checkpoint's ``state_dict``, and ``ema-`` twin files.

For every checkpoint ``X.ckpt`` the Trainer writes, :class:`TwinCheckpointIO` lets its owner write ``ema-X.ckpt``:
the checkpoint with the EMA weights in ``state_dict`` and no training state, loadable with
``LightningModule.load_from_checkpoint``; it removes the twin with ``X.ckpt`` (ModelCheckpoint's top-k rotation).
:class:`EMAStateCallback` is the checkpoint side of :class:`lit_tricks.callbacks.EMAWeights` (its base class); under
``ModelParallelStrategy`` (FSDP2) its base :class:`~lit_tricks.fault.ema_shards.ShardedEMACheckpoints` takes over.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch import Tensor

from lit_tricks.compat import installed_checkpoint_io, sharded_strategy_name
from lit_tricks.fault.atomic import atomic_torch_save
from lit_tricks.fault.ema_shards import TRAINING_STATE, ShardedEMACheckpoints
from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.ema_state import EMAState

__all__ = [
    "EMA_CHECKPOINT_PREFIX", "EMA_CHECKPOINT_SUFFIX", "EMAStateCallback", "TwinCheckpointIO", "TwinWriter",
    "ema_checkpoint_path", "is_ema_twin",
    "remove_twin", "save_ema_twin",
]

EMA_CHECKPOINT_PREFIX = "ema-"
EMA_CHECKPOINT_SUFFIX = "-ema"  # how older versions named twins (``X-ema.ckpt``): still recognised as twins
_TRAINING_STATE = TRAINING_STATE  # what a twin drops from the checkpoint: it is for inference, not for resuming


def ema_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Where the EMA-only twin of checkpoint ``path`` (a file or a distributed-checkpoint directory) goes, beside it:
    ``last.ckpt -> ema-last.ckpt``.

    Never a name starting with ``last``: Lightning's ``fit(ckpt_path="last")`` resumes from the newest ``last*``
    entry of a ModelCheckpoint's folder, and a twin holds no training state.
    """
    p = Path(path)
    return p.with_name(EMA_CHECKPOINT_PREFIX + p.name)


def is_ema_twin(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is itself a twin (a twin gets no twin): ``ema-X.ckpt``, or ``X-ema.ckpt`` as older
    versions named them."""
    p = Path(path)
    return p.name.startswith(EMA_CHECKPOINT_PREFIX) or p.stem.endswith(EMA_CHECKPOINT_SUFFIX)


def remove_twin(path: str | os.PathLike[str]) -> None:
    """Remove the twin (a file, or a directory beside a distributed checkpoint) of checkpoint ``path``, if any."""
    twin = ema_checkpoint_path(path)
    if twin.is_dir() and not twin.is_symlink():
        shutil.rmtree(twin)
    elif twin.exists():
        twin.unlink()


def save_ema_twin(checkpoint: dict[str, Any], path: str | os.PathLike[str], put_weights: Callable[[dict], None],
                  meta: dict[str, Any], write: bool = True) -> None:
    """Write the twin of ``checkpoint`` (saved at ``path``): its entries less the training state, ``state_dict``
    rewritten by ``put_weights(state_dict)``, and ``meta`` under ``"lit_tricks_ema"``; atomically. ``write=False``
    (ranks > 0 of a sharded full-file save) only calls ``put_weights``, which gathers the EMA with rank 0."""
    twin = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    state_dict = dict(checkpoint.get("state_dict", {}))
    put_weights(state_dict)
    twin["state_dict"] = state_dict
    twin["lit_tricks_ema"] = {**meta, "source": Path(path).name}
    if write:
        atomic_torch_save(twin, ema_checkpoint_path(path))


class TwinWriter(Protocol):
    """What :class:`TwinCheckpointIO` asks its owner (EMAWeights implements it)."""

    save_ema_checkpoint: bool

    def put_raw_weights(self, checkpoint: dict[str, Any]) -> None: ...

    def write_ema_twin(self, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None: ...


class TwinCheckpointIO(CheckpointIO):
    """Delegates to the strategy's CheckpointIO; also writes and removes the ``ema-`` twin of each checkpoint.

    For every save: (1) a weights-only checkpoint (Lightning skipped the callback hooks) gets the raw weights from
    ``owner.put_raw_weights``, (2) the inner IO writes it, (3) ``owner.write_ema_twin`` writes the twin when
    ``owner.save_ema_checkpoint``. A removal removes the twin too. A user CheckpointIO plugin stays underneath.
    """

    def __init__(self, inner: CheckpointIO, owner: TwinWriter) -> None:
        self.inner = inner
        self.owner = owner

    @classmethod
    def install(cls, strategy: Strategy, owner: TwinWriter) -> TwinCheckpointIO:
        """Wrap ``strategy``'s CheckpointIO in a new instance and put it in its place; returns it."""
        io = cls(strategy.checkpoint_io, owner)
        strategy.checkpoint_io = io
        return io

    def uninstall(self, strategy: Strategy) -> None:
        """Put the wrapped CheckpointIO back on ``strategy``, unless another IO has replaced this one since."""
        if installed_checkpoint_io(strategy) is self:
            strategy.checkpoint_io = self.inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "callbacks" not in checkpoint:  # weights-only save: Lightning skipped on_save_checkpoint
            self.owner.put_raw_weights(checkpoint)
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        if self.owner.save_ema_checkpoint:
            self.owner.write_ema_twin(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        remove_twin(path)

    def teardown(self) -> None:
        self.inner.teardown()


class EMAStateCallback(ShardedEMACheckpoints, Callback):
    """A callback holding an :class:`~lit_tricks.functional.ema_state.EMAState`: its checkpoint side, views of the
    state, binding it to a module and keeping its buffers equal on every rank (the base of EMAWeights).

    Every checkpoint gets the raw weights in ``state_dict`` (also when saved while the EMA is swapped in, also
    weights-only saves), so resuming with or without the callback trains on from the raw weights. With
    ``save_ema_checkpoint`` a :class:`TwinCheckpointIO`, installed from ``setup`` to ``teardown``, writes the
    ``ema-`` twins through :meth:`write_ema_twin`. Under ``ModelParallelStrategy`` (FSDP2) each rank averages its
    own shards and :class:`~lit_tricks.fault.ema_shards.ShardedEMACheckpoints` saves them, in both of its checkpoint
    modes; other sharded strategies (FSDP1's flat parameters, DeepSpeed ZeRO-3) are refused at ``setup``.
    """

    def __init__(self, state: EMAState, save_ema_checkpoint: bool = True, evaluate_with: str = "ema",
                 validate_both: bool = False) -> None:
        super().__init__()
        #: the EMA tensors, their decay rule and the swapping (Trainer-free)
        self.state = state
        self.save_ema_checkpoint = save_ema_checkpoint
        self.evaluate_with = evaluate_with
        self.validate_both = validate_both  # the module logs raw (un-suffixed) and EMA (``_ema``) metrics
        self._installed_io: TwinCheckpointIO | None = None

    @property
    def num_updates(self) -> int:
        """EMA updates done (``t`` of the warm-up formula)."""
        return self.state.num_updates

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self.state.num_updates = value

    @property
    def base_decay(self) -> float:
        """The per-update decay before warm-up (from ``half_life_steps`` when given)."""
        return self.state.base_decay

    @property
    def ema_state_dict(self) -> dict[str, Tensor]:
        """The EMA as ``{state_dict key: tensor}`` (empty before the first fit/restore)."""
        return self.state.ema_state_dict

    @property
    def _ema_params(self) -> list[Tensor]:
        return self.state.ema_params

    def decay_at(self, num_updates: int) -> float:
        """The decay of update number ``num_updates`` (0-based), warm-up included."""
        return self.state.decay_at(num_updates)

    def put_raw_weights(self, checkpoint: dict[str, Any]) -> None:
        """If the EMA is in the model (evaluation or apply_at_end), put the raw weights into ``state_dict``."""
        if self.state.swapped and "state_dict" in checkpoint:
            self.state.write_into(checkpoint["state_dict"], raw=True)

    def write_ema_twin(self, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
        """Write ``ema-<path name>``: the checkpoint with EMA weights in ``state_dict``, no training state.

        The hook called (rank 0, after the strategy's CheckpointIO wrote ``checkpoint`` to ``path``) for every
        checkpoint while ``save_ema_checkpoint=True``; override it to write the twin elsewhere or otherwise. Under
        ``ModelParallelStrategy`` the twins are written on every rank by :meth:`after_save` instead.
        """
        if is_ema_twin(path) or not self.state.names:
            return
        save_ema_twin(checkpoint, path, lambda sd: self.state.write_into(sd, model_dtype=True), self.twin_meta())

    def twin_path(self, path: Path) -> Path:
        return ema_checkpoint_path(path)

    def is_twin(self, path: Path) -> bool:
        return is_ema_twin(path)

    def remove_twin(self, path: Path) -> None:
        remove_twin(path)

    def write_twin_file(self, checkpoint: dict[str, Any], path: Path, put_weights: Callable[[dict], None],
                        meta: dict[str, Any], write: bool) -> None:
        save_ema_twin(checkpoint, path, put_weights, meta, write)

    def evaluated_variant(self) -> str | None:
        """``"ema"`` when validation/test evaluate the EMA (:class:`lit_tricks.callback_protocols.EvaluatesVariant`);
        None with ``validate_both``: the un-suffixed metrics are the raw weights' then (the EMA's carry ``_ema``)."""
        return "ema" if self.evaluate_with == "ema" and not self.validate_both else None

    def variant_checkpoint(self, path: str | os.PathLike[str]) -> str | None:
        """The ``ema-`` twin of checkpoint ``path`` when that file exists, else None."""
        twin = ema_checkpoint_path(path)
        return str(twin) if twin.is_file() else None

    def _ensure(self, pl_module: pl.LightningModule) -> None:
        """Bind to the model's tensors and create (or match the loaded) EMA tensors."""
        self.bind_ema(pl_module)

    def _sync_buffers(self, trainer: pl.Trainer) -> None:
        """Give every rank rank 0's EMA buffers (BatchNorm statistics differ per rank under DDP)."""
        if trainer.world_size <= 1 or not self.state.ema_buffers:
            return
        self.state.set_buffers(trainer.strategy.broadcast([b.cpu() for b in self.state.ema_buffers], src=0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        sharded = sharded_strategy_name(trainer.strategy)
        if sharded and not isinstance(trainer.strategy, ModelParallelStrategy):
            raise ValueError(
                f"EMAWeights under sharding needs ModelParallelStrategy (FSDP2), got {sharded}: its flat or offloaded "
                "shards are not averaged or saved; use ModelParallelStrategy (trainer=fsdp_cpu), ddp, or no EMAWeights"
            )
        if sharded:  # every rank saves its own EMA shards, or gathers them into a full file
            self.attach_saves(trainer.strategy)
        elif self._installed_io is None:  # writes the ema- twins; keeps weights-only checkpoints raw too
            self._installed_io = TwinCheckpointIO.install(trainer.strategy, self)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed_io is not None:
            self._installed_io.uninstall(trainer.strategy)
        self._installed_io = None
        self.detach_saves()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict[str, Any]) -> None:
        warn_changed_args(self, ckpt)  # state saved under other arguments: say that it is not restored

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict[str, Any]) -> None:
        if self._saves is None:  # sharded: before_save does it (on every rank, also for weights-only saves)
            self.put_raw_weights(ckpt)
