"""PostHocEMA: track power-function EMAs and write snapshots of them, to choose the EMA length after training."""

from __future__ import annotations

import hashlib
import logging
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from lit_tricks.compat import sharded_strategy_name
from lit_tricks.fault.atomic import atomic_torch_save
from lit_tricks.fault.checkpoint_io import clean_stale_temp_files
from lit_tricks.fault.sharded_state import ShardedCallbackState
from lit_tricks.fault.state_keys import cached_state_key, warn_changed_args
from lit_tricks.functional import sharded
from lit_tricks.functional.ema import named_ema_tensors, optimizer_steps_since
from lit_tricks.functional.posthoc_ema import SIGMA_REL_MAX, PowerEMAProfiles, gamma_to_sigma_rel, sigma_rel_to_gamma
from lit_tricks.validation import ArgumentError, check_number

__all__ = ["SNAPSHOT_FORMAT", "PostHocEMA", "list_snapshots", "snapshot_path"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
#: ``"format"`` entry of every snapshot file.
SNAPSHOT_FORMAT = "lit_tricks.posthoc_ema/1"
_NAME = re.compile(r"posthoc-ema-(\d+)\.pt")
_OWNER = "PostHocEMA"


def snapshot_path(dirpath: str | Path, step: int) -> Path:
    """The snapshot file of optimizer step ``step``: ``<dirpath>/posthoc-ema-<step, 9 digits>.pt``."""
    return Path(dirpath) / f"posthoc-ema-{step:09d}.pt"


def list_snapshots(dirpath: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the snapshot files in ``dirpath``, by step (none when the folder does not exist)."""
    folder = Path(dirpath)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


class PostHocEMA(ShardedCallbackState, Callback):
    """Track power-function EMAs of the weights (EDM2, Karras et al. 2024) and write snapshots of them every
    ``snapshot_every_n_steps`` optimizer steps, so that an EMA of any length can be synthesized after training
    (:func:`lit_tricks.posthoc.reconstruct_posthoc_ema`, ``lit-tricks-posthoc-ema RUN_DIR``).

    Profiles: ``sigma_rels`` (relative standard deviations, in ``(0, 0.2887]``; the paper's 0.05 and 0.10 by
    default) or ``gammas`` (the exponents, ``>= 0``). After each ``update_every_n_steps``-th optimizer step ``t``
    every profile does ``ema <- beta * ema + (1 - beta) * w``, ``beta = (1 - update_every_n_steps / t)^(gamma + 1)``
    (:mod:`lit_tricks.functional.posthoc_ema`); buffers are not averaged: each snapshot holds the model's buffers.

    Snapshots: ``<dirpath>/posthoc-ema-<step>.pt`` (``torch.load(weights_only=True)``), written atomically by rank 0
    at every multiple of ``snapshot_every_n_steps`` and, with ``snapshot_at_end``, when training ends. A file holds
    every profile's floating parameters (fp32 for bf16/fp16 weights) and the buffers once: about
    ``len(profiles) x`` the parameter bytes. ``dirpath=None``: ``<ModelCheckpoint dirpath>/posthoc_ema`` (else
    ``<log_dir or default_root_dir>/checkpoints/posthoc_ema``), ``posthoc_ema-v1``... when another run's snapshots
    are there; a resumed run keeps its folder.

    Resume is exact: the profiles and step counters are in the callback state, and when training starts (a resume,
    a second fit) the snapshots of this folder past the restored step (written by a run that went on after the
    checkpoint, or at the end of an earlier fit) are removed; they are written again, equal, as training passes
    their steps. Under DDP every rank tracks the same EMAs and rank 0 writes (its BatchNorm buffers). Under
    ``ModelParallelStrategy`` (FSDP2) each rank tracks its own shards (DTensor shadows placed like the parameters, no
    communication per update); a snapshot gathers them into full tensors (every rank) and rank 0 writes; checkpoints
    hold the profiles gathered (one full file) or as shards in ``X.ckpt/posthoc_ema-<id>/`` (directories:
    :class:`~lit_tricks.fault.sharded_state.ShardedCallbackState`). Other sharded strategies (FSDP1, DeepSpeed
    ZeRO-3) are refused at ``setup``.
    """

    def __init__(
        self,
        sigma_rels: Sequence[float] | None = None,
        *,
        gammas: Sequence[float] | None = None,
        snapshot_every_n_steps: int = 1000,
        update_every_n_steps: int = 1,
        dirpath: str | None = None,
        snapshot_at_end: bool = True,
    ) -> None:
        super().__init__()
        if sigma_rels is not None and gammas is not None:
            raise ArgumentError("gammas", list(gammas), "must be None when sigma_rels is given (one or the other)",
                                _OWNER)
        if gammas is None:
            values = list(sigma_rels) if sigma_rels is not None else [0.05, 0.10]
            if not values:
                raise ArgumentError("sigma_rels", values, "must hold at least one value", _OWNER)
            for v in values:
                check_number("sigma_rels", v, 0.0, SIGMA_REL_MAX, lo_open=True, hi_open=False, owner=_OWNER)
            gammas = [sigma_rel_to_gamma(float(v)) for v in values]
        else:
            if not list(gammas):
                raise ArgumentError("gammas", list(gammas), "must hold at least one value", _OWNER)
            for g in gammas:
                check_number("gammas", g, 0.0, owner=_OWNER)
        if len(set(gammas)) != len(gammas):
            raise ArgumentError("sigma_rels", list(sigma_rels or gammas), "must be distinct", _OWNER)
        check_number("snapshot_every_n_steps", snapshot_every_n_steps, 1, integer=True, owner=_OWNER)
        check_number("update_every_n_steps", update_every_n_steps, 1, integer=True, owner=_OWNER)
        if snapshot_every_n_steps % update_every_n_steps:
            raise ArgumentError("snapshot_every_n_steps", snapshot_every_n_steps,
                                f"must be a multiple of update_every_n_steps={update_every_n_steps}", _OWNER)
        self.sigma_rels = None if sigma_rels is None else [float(v) for v in sigma_rels]
        self.gammas = [float(g) for g in gammas]
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.update_every_n_steps = update_every_n_steps
        self.dirpath = dirpath
        self.snapshot_at_end = snapshot_at_end
        self.profiles = PowerEMAProfiles(self.gammas, update_every_n_steps)
        self.last_step = 0  # trainer.global_step when the callback last saw an optimizer step (this Trainer)
        self._params: list[Tensor] = []
        self._dir: str | None = None  # the snapshot folder of this run, once chosen (in the state)
        self._restored = False
        self._bound: weakref.ref[pl.LightningModule] | None = None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, gammas=tuple(self.gammas), update_every_n_steps=self.update_every_n_steps)

    @property
    def shards_dir(self) -> str:
        """The folder of a distributed checkpoint holding this instance's shards (one per ``state_key``)."""
        return "posthoc_ema-" + hashlib.sha1(self.state_key.encode()).hexdigest()[:8]

    def sharded_state(self) -> dict[str, Any]:
        return {f"profile{i}": p for i, p in enumerate(self.profiles.profiles())} if self.profiles.shadows else {}

    @property
    def snapshot_dir(self) -> Path | None:
        """The folder this run's snapshots go to (None until training started)."""
        return Path(self._dir) if self._dir is not None else None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name = sharded_strategy_name(trainer.strategy)
        if name and not isinstance(trainer.strategy, ModelParallelStrategy):
            raise ValueError(f"PostHocEMA under sharding needs ModelParallelStrategy (FSDP2), got {name}; use "
                             "ModelParallelStrategy (trainer=fsdp_cpu) or ddp")
        if name:  # every rank saves its shards of the profiles beside a distributed checkpoint
            self.attach_saves(trainer.strategy)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach_saves()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bound = self._bound() if self._bound is not None else None
        if bound is not None and bound is not pl_module and not self._restored:  # another module
            self.profiles = PowerEMAProfiles(self.gammas, self.update_every_n_steps)
            self._dir = None
        self._bound = weakref.ref(pl_module)
        self._bind(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bind(pl_module)  # ModelParallelStrategy restores the callback state after on_fit_start
        self.last_step = trainer.global_step
        self._dir = str(self._choose_dir(trainer).absolute())  # every rank: a refusal stops all (shared file system)
        if trainer.is_global_zero:
            self._remove_stale()
        self._restored = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        steps = optimizer_steps_since(self.last_step, trainer.global_step)
        if not steps:  # no optimizer step on this batch (gradient accumulation)
            return
        self.last_step = trainer.global_step
        if self.profiles._pending is not None or not self.profiles.shadows:
            self._bind(pl_module)
        if self.profiles.step(self._params, steps) and self.profiles.last_update % self.snapshot_every_n_steps == 0:
            self.write_snapshot(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.profiles.last_update
        if self.snapshot_at_end and t > 0 and t % self.snapshot_every_n_steps:
            self.write_snapshot(trainer, pl_module)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def state_dict(self) -> dict[str, Any]:
        profiles = self.profiles.state_dict(full=self.gathers())  # sharded into one file: gathered (every rank)
        shards = {}
        if self.distributed():  # sharded into a directory: the shards are written beside (write_beside)
            profiles["ema"], shards = [], ({"shards": self.shards_dir} if self.profiles.shadows else {})
        return {"version": _STATE_VERSION, "profiles": profiles, "last_step": self.last_step, "dirpath": self._dir,
                **shards}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.profiles = PowerEMAProfiles(self.gammas, self.update_every_n_steps)
        self.profiles.load_state_dict(state_dict.get("profiles", {}))
        self.expect_shards(state_dict.get("shards"))
        self.last_step = int(state_dict.get("last_step", 0))
        self._dir = state_dict.get("dirpath")
        self._restored = True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bound": None, "_params": [], "_saves": None}  # picklable under ddp_spawn

    # ------------------------------------------------------------------ snapshots
    def write_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        """Write the current profiles (and the model's buffers) as the snapshot of step ``last_update``; rank 0
        writes, the other ranks return None (sharded profiles are gathered first: every rank calls this). Override
        to store snapshots elsewhere."""
        gather = any(sharded.is_dtensor(t) for t in self._params)
        if self._dir is None or not (trainer.is_global_zero or gather):
            return None
        ema = self.profiles.profiles(full=True)  # a collective when sharded
        if not trainer.is_global_zero:
            return None
        _, buffers = named_ema_tensors(pl_module)
        snapshot = {
            "format": SNAPSHOT_FORMAT, "step": self.profiles.last_update, "gammas": list(self.gammas),
            "sigma_rels": [gamma_to_sigma_rel(g) for g in self.gammas], "ema": ema,
            "buffers": {n: sharded.full(t).detach().to("cpu", copy=True) for n, t in buffers},
        }
        path = snapshot_path(self._dir, self.profiles.last_update)
        atomic_torch_save(snapshot, path)
        return path

    def _bind(self, pl_module: pl.LightningModule) -> None:
        params, _ = named_ema_tensors(pl_module)
        self._params = [t.detach() for _, t in params]
        self.profiles.bind([(n, t.detach()) for n, t in params])
        self.load_pending_shards()  # restored from a distributed checkpoint: its shards, re-sharded (every rank)

    def _choose_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            chosen = Path(self.dirpath)
            if self.profiles.steps == 0 and not self._restored and list_snapshots(chosen):
                raise ValueError(f"PostHocEMA: dirpath={self.dirpath!r} already holds snapshots of another run; "
                                 "resume that run, remove them or pass another dirpath")
            return chosen
        if self._dir is not None:  # restored, or a second fit of this instance
            return Path(self._dir)
        ckpt = trainer.checkpoint_callback
        ckpt_dir = getattr(ckpt, "dirpath", None) if ckpt is not None else None
        base = Path(ckpt_dir) if ckpt_dir else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        candidate, n = base / "posthoc_ema", 0
        while list_snapshots(candidate):
            n += 1
            candidate = base / f"posthoc_ema-v{n}"
        return candidate

    def _remove_stale(self) -> None:
        """Remove the snapshots past the restored step (and an end-of-fit one at it): training passes them again; and
        the temp file of a snapshot write a kill interrupted."""
        if self._dir is None:
            return
        clean_stale_temp_files(self._dir)
        if self.profiles.steps == 0:
            return
        t = self.profiles.last_update
        for step, path in list_snapshots(self._dir):
            if step > t or (step == t and step % self.snapshot_every_n_steps):
                log.info("PostHocEMA: removing %s (past the restored step %d)", path, t)
                path.unlink(missing_ok=True)
