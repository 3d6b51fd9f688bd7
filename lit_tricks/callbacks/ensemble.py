"""CheckpointEnsemble: snapshot / top-k / cycle-end / given-checkpoint ensembles of any LightningModule."""

from __future__ import annotations

import copy
import logging
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from lit_tricks.compat import checkpoint_ranks_at_train_epoch_end, module_trainer
from lit_tricks.fault.ensemble_files import EnsembleMembersCallback
from lit_tricks.fault.state_keys import adopt_resized_state, cached_state_key
from lit_tricks.functional.ensemble import COMBINERS
from lit_tricks.functional.ensemble_members import (
    EnsembleMembers,
    cpu_state,
    load_member_state_dict,
    top_k_decision,
)
from lit_tricks.validation import ArgumentError, check_choice, check_number

__all__ = ["CheckpointEnsemble", "load_member_state_dict", "top_k_decision"]

log = logging.getLogger(__name__)

_MODES = ("min", "max")
_M = TypeVar("_M", bound=nn.Module)


def _clone(module: _M) -> _M:
    """``deepcopy(module)`` that shares (never copies) the Trainer and its callbacks, which a module may reference
    through bound methods (e.g. the weight-variants protocol)."""
    memo: dict[int, Any] = {}
    trainer = module_trainer(module)
    if trainer is not None:
        memo[id(trainer)] = trainer
        for callback in getattr(trainer, "callbacks", []):
            memo[id(callback)] = callback
    return copy.deepcopy(module, memo)


class CheckpointEnsemble(EnsembleMembersCallback):
    """Collect ensemble members during training and evaluate their average at test time.

    Members come from any mix of: every ``every_n_epochs`` epochs (snapshot ensemble, Huang et al. 2017), the
    ``top_k`` epochs by ``monitor`` (``mode`` min/max; with ``monitor=None`` the ``best_k_models`` of the Trainer's
    ModelCheckpoint at fit end), the end of each warm-restart cycle (``at_cycle_ends``: the LR scheduler's
    ``cycle_ends()``, step indices = ``trainer.global_step`` right after a cycle's last optimizer step), and the files
    in ``checkpoint_paths`` (Lightning checkpoints or state dicts). Snapshots are captured at train epoch end (after
    validation), cycle-end members at the step ending a cycle. Top-k members are the weights validation evaluated
    (EMA weights when swapped in), ranked when ModelCheckpoint ranks
    (:func:`~lit_tricks.compat.checkpoint_ranks_at_train_epoch_end`), before its save of that epoch lists them.

    The members and their use are a Trainer-free :class:`~lit_tricks.functional.ensemble_members.EnsembleMembers`;
    files, state and ranks are :class:`~lit_tricks.fault.ensemble_files.EnsembleMembersCallback`'s (resume is exact;
    under DDP rank 0 decides and broadcasts). This class maps Lightning's hooks to them.

    Test: logs ``test/acc_ensemble`` and ``test/loss_ensemble`` (NLL of the ensemble probabilities) for batches
    ``(x, y, ...)``. ``combine``: ``mean_prob`` (default), ``mean_logit``, ``vote``. Guide:
    docs/parts/checkpoint_ensemble.md.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int | None = None,
        top_k: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        at_cycle_ends: bool = False,
        checkpoint_paths: list[str] | None = None,
        combine: str = "mean_prob",
        dirpath: str | None = None,
        keep_inline: bool = False,
        use_vmap: bool | None = None,
        log_test: bool = True,
        log_prefix: str = "test",
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("top_k", top_k)):
            if value is not None:
                check_number(name, value, 1, integer=True, owner="CheckpointEnsemble")
        check_choice("mode", mode, _MODES, owner="CheckpointEnsemble")
        check_choice("combine", combine, sorted(COMBINERS), owner="CheckpointEnsemble")
        if monitor is not None and top_k is None:
            raise ArgumentError("monitor", monitor, "is only used with top_k; set top_k (e.g. 3) or monitor=None",
                                "CheckpointEnsemble")
        paths = [str(p) for p in (checkpoint_paths or [])]
        if every_n_epochs is None and top_k is None and not at_cycle_ends and not paths:
            raise ValueError(
                "CheckpointEnsemble needs a member source: every_n_epochs, top_k, at_cycle_ends=True or "
                "checkpoint_paths; got none"
            )
        super().__init__(EnsembleMembers(paths, keep_inline=keep_inline, clone=_clone), dirpath, combine, use_vmap)
        self.every_n_epochs = every_n_epochs
        self.top_k = top_k
        self.monitor = monitor
        self.mode = mode
        self.at_cycle_ends = at_cycle_ends
        self.checkpoint_paths = paths
        self.keep_inline = keep_inline
        self.log_test = log_test
        self.log_prefix = log_prefix
        # runtime only
        self._cycle_ends: set[int] = set()
        self._warned_batch = False
        self._warned_monitor = False
        self._evaluated: dict[str, Tensor] | None = None
        self._unranked: tuple[dict[str, Tensor], int, int] | None = None  # (state, epoch, step) awaiting its score
        self._left_on_load: list[str] = []  # member files beyond top_k after a resume with a smaller top_k

    @property
    def state_key(self) -> str:
        return cached_state_key(self,
            every_n_epochs=self.every_n_epochs, monitor=self.monitor, mode=self.mode, at_cycle_ends=self.at_cycle_ends,
        )  # not ``top_k``: it sizes the state; resumed with a smaller one, the best members stay (load_state_dict)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict[str, Any]) -> None:
        adopt_resized_state(self, ckpt, sizing=("top_k",))  # saved when top_k was part of the key
        super().on_load_checkpoint(trainer, pl_module, ckpt)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved members; with a smaller ``top_k`` than they were saved with, only the best ``top_k`` of them by
        ``monitor`` stay (as Lightning's top-k gives up the worst), the files of the others go at train start."""
        super().load_state_dict(state_dict)
        if self.top_k is not None:
            self._left_on_load += [m["path"] for m in self.store.trim_top_k(self.top_k, self.mode)]

    def _update_top_k(self, trainer: pl.Trainer, state: dict[str, Tensor], at: tuple[int, int] | None = None) -> None:
        if self.monitor is None or self.top_k is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_monitor:
                log.warning(
                    "CheckpointEnsemble(monitor=%r): no such metric at the end of epoch %d; logged metrics: %s",
                    self.monitor, trainer.current_epoch if at is None else at[0], sorted(trainer.callback_metrics),
                )
                self._warned_monitor = True
            return
        enters, drop, stored, order = self.store.top_k_entry(float(value), self.top_k, self.mode)
        if not enters:
            return
        if drop is not None:
            self._drop_tag(trainer, drop, "top_k")
        self._capture(trainer, state, "top_k", stored, at)["top_k_order"] = order

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._keep_members_on_load = False
        if stage == "fit":
            self._run_dir = None
            self._evaluated = self._unranked = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.dirpath is None and not self.keep_inline:  # after a restore: rank 0 picks the folder for all
            self._run_dir = str(trainer.strategy.broadcast(str(self._choose_run_dir(trainer)), src=0))
        for path in self._left_on_load:  # members beyond a smaller top_k than the checkpoint's
            self._remove_member_file(trainer, path)
        self._left_on_load = []
        self._cycle_ends = set()
        if not self.at_cycle_ends:
            return
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        found = [fn for fn in (getattr(s, "cycle_ends", None) for s in schedulers) if callable(fn)]
        if not found:
            names = [type(s).__name__ for s in schedulers] or "no LR scheduler"
            raise ValueError("CheckpointEnsemble(at_cycle_ends=True) needs an LR scheduler with a cycle_ends() method "
                             f"(e.g. lit_tricks' SGDR schedules); the Trainer has: {names}")
        self._cycle_ends = {int(step) for fn in found for step in fn()}

    def _scores_validation(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.state.fn == "fit" and self.top_k is not None
            and self.monitor is not None
        )

    def _rank_unranked(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Rank the train-epoch-end candidate, now that the module's ``on_train_epoch_end`` has logged."""
        if self._unranked is None:
            return False
        state, epoch, step = self._unranked
        self._unranked = None
        self._update_top_k(trainer, state, at=(epoch, step))
        self._sync(trainer, pl_module)
        return True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # what is evaluated now (EMA weights if a callback swapped them in); the score is known at validation end
        self._evaluated = cpu_state(pl_module) if self._scores_validation(trainer) else None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # top-k members are the weights that produced the score, captured before ModelCheckpoint saves
        if (not self._scores_validation(trainer) or self._evaluated is None
                or checkpoint_ranks_at_train_epoch_end(trainer)):
            return  # ranked at train epoch end (with the weights evaluated here)
        state, self._evaluated = self._evaluated, None
        self._update_top_k(trainer, state)
        self._sync(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step not in self._cycle_ends:
            return
        # once per optimizer step: with gradient accumulation the hook repeats at this step, also on the first
        # batches of the next epoch (whose forward passes have already moved the BatchNorm statistics)
        if not any("cycle" in m["tags"] and m["step"] == step for m in self.members):
            self._capture(trainer, cpu_state(pl_module), "cycle", None)
            self._sync(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        changed = False
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._capture(trainer, cpu_state(pl_module), "epoch", None)
            changed = True
        if self._scores_validation(trainer) and checkpoint_ranks_at_train_epoch_end(trainer):
            # Lightning calls the module's on_train_epoch_end (which may log the monitor) after this hook and
            # before ModelCheckpoint's: rank there (on_save_checkpoint) or at the next hook, whichever is first
            state = self._evaluated if self._evaluated is not None else cpu_state(pl_module)
            self._evaluated = None
            self._unranked = (state, int(trainer.current_epoch), int(trainer.global_step))
        if changed:
            self._sync(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rank_unranked(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning has already put state_dict() in the checkpoint: refresh it when a member was just ranked
        if self._rank_unranked(trainer, pl_module) and self.state_key in checkpoint.get("callbacks", {}):
            checkpoint["callbacks"][self.state_key] = self.state_dict()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rank_unranked(trainer, pl_module)
        if self.top_k is None or self.monitor is not None:
            return
        ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        if ckpt is None or not ckpt.best_k_models:
            log.warning("CheckpointEnsemble(top_k, monitor=None): no ModelCheckpoint with a monitor and best_k_models")
            return
        self.store.use_checkpoint_top_k(ckpt.best_k_models, self.top_k, ckpt.mode)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.log_test or not self.members:
            return
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor)):
            if not self._warned_batch:
                log.warning("CheckpointEnsemble: test batches are not (x, y, ...); no ensemble metrics logged")
                self._warned_batch = True
            return
        x, y = batch[0], batch[1]
        probs = self.predict_proba(x, pl_module)
        acc = (probs.argmax(-1) == y).float().mean()
        nll = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)
        n = int(y.shape[0])
        pl_module.log(f"{self.log_prefix}/acc_ensemble", acc, on_step=False, on_epoch=True, batch_size=n,
                      sync_dist=True)
        pl_module.log(f"{self.log_prefix}/loss_ensemble", nll, on_step=False, on_epoch=True, batch_size=n,
                      sync_dist=True)
