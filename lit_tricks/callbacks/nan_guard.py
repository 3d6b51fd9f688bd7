"""NaNGuard: catch a non-finite loss or gradient, or a loss that has exploded, before the optimizer step, and never
checkpoint non-finite weights."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lit_tricks.compat import unwrap_optimizer
from lit_tricks.fault.state_keys import cached_state_key, warn_changed_args
from lit_tricks.functional.divergence import DivergenceDetector, finite_flag, non_finite_entries
from lit_tricks.functional.lr_scale import scale_lr_
from lit_tricks.functional.sharded import has_dtensors
from lit_tricks.functional.step_undo import StepUndo, copy_buffers, restore_buffers_, restore_snapshot, take_snapshot
from lit_tricks.functional.step_undo import copy_step_state as _copy_step_state
from lit_tricks.validation import check_choice, check_number

__all__ = ["POLICIES", "NaNGuard", "NonFiniteCheckpointError"]

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: the divergence check's reference and counter

#: What NaNGuard does with a step whose loss or gradients are not finite.
POLICIES: dict[str, str] = {
    "stop": "drop the step's update, then stop training after this batch",
    "skip_step": "drop the step's update (and the batch's BatchNorm statistics), go on with the next batch",
    "rollback": "restore the last good in-memory snapshot of weights and optimizer, multiply the lr by lr_factor",
}


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint was about to be written with NaN/inf weights or optimizer state; it was not written."""


class NaNGuard(Callback):
    """Check the loss and every gradient at each optimizer step, before the step, and apply ``policy`` when one is
    NaN/inf.

    How a bad step is dropped, for any LightningModule (automatic or manual optimization): in
    ``on_before_optimizer_step`` (inside ``optimizer.step``, after backward) the guard copies the optimizer's
    parameters and per-parameter state, sets every gradient to ``None`` and restores the copies right after the step
    (:class:`~lit_tricks.functional.step_undo.StepUndo`), so nothing else that runs in that step (TrickModule's
    decoupled weight decay, an optimizer that decays without a gradient) leaves a trace; only bad steps pay for the
    copy. The lr scheduler and the global step still advance. Under DDP the ranks agree (any rank bad = all skip).

    ``policy``: one of :data:`POLICIES`. ``lr_factor``: rollback multiplies every param group's lr (and the lr
    schedulers' ``base_lrs``) by it. ``snapshot_every_n_steps``: how often rollback's in-memory snapshot (a copy of
    the weights, buffers and optimizer state) is refreshed after a good step; 1 = the step just before.
    ``max_consecutive``: stop after this many bad steps in a row (any policy). ``check_on_save``: refuse (raise
    :class:`NonFiniteCheckpointError`) to write a checkpoint whose weights or optimizer state are not finite, so the
    last good checkpoint is never replaced by a broken one. Lightning alone trains on after a NaN loss and its
    ModelCheckpoint overwrites ``last.ckpt`` with NaN weights.

    Divergence (off unless ``divergence_factor`` is set; :class:`~lit_tricks.functional.divergence.DivergenceDetector`):
    a finite loss above ``divergence_factor`` x the mean of the first ``divergence_ref_steps`` finite step losses at
    each of the last ``divergence_window`` steps is a bad step too, handled by the same ``policy``. The step loss is
    the sum of the losses passed to backward since the last optimizer step (the mean over an accumulated batch),
    averaged over the ranks under DDP (in the NaN flag's collective). Reference and counter are in
    :meth:`state_dict`; a rollback restarts the counter; with ``skip_step`` a loss that stays high drops every step
    until ``max_consecutive`` stops the run.
    """

    def __init__(
        self,
        policy: str = "skip_step",
        lr_factor: float = 0.5,
        snapshot_every_n_steps: int = 1,
        max_consecutive: int = 10,
        check_grads: bool = True,
        check_on_save: bool = True,
        divergence_factor: float | None = None,
        divergence_ref_steps: int = 5,
        divergence_window: int = 3,
    ) -> None:
        super().__init__()
        check_choice("policy", policy, sorted(POLICIES), owner="NaNGuard")
        check_number("lr_factor", lr_factor, 0.0, 1.0, lo_open=True, hi_open=False, owner="NaNGuard")
        for name, value in (("snapshot_every_n_steps", snapshot_every_n_steps), ("max_consecutive", max_consecutive),
                            ("divergence_ref_steps", divergence_ref_steps), ("divergence_window", divergence_window)):
            check_number(name, value, 1, integer=True, owner="NaNGuard")
        if divergence_factor is not None:
            check_number("divergence_factor", divergence_factor, 1.0, lo_open=True, owner="NaNGuard")
        self.policy = policy
        self.lr_factor = float(lr_factor)
        self.snapshot_every_n_steps = int(snapshot_every_n_steps)
        self.max_consecutive = int(max_consecutive)
        self.check_grads = check_grads
        self.check_on_save = check_on_save
        self.divergence_factor = None if divergence_factor is None else float(divergence_factor)
        self.divergence_ref_steps = int(divergence_ref_steps)
        self.divergence_window = int(divergence_window)
        # persistent state
        self.bad_steps: list[int] = []
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.consecutive = 0
        self.diverged_steps: list[int] = []
        #: the divergence check's reference loss and counter (Trainer-free)
        self.divergence = DivergenceDetector(self.divergence_factor, self.divergence_ref_steps, self.divergence_window)
        # per-step, in memory
        self._loss_ok: torch.Tensor | None = None
        self._step_loss: torch.Tensor | None = None  # sum of the losses passed to backward since the last step
        self._checked_step = -1  # global step whose loss the divergence check has seen (L-BFGS re-evaluates)
        self._batch_start_step = -1
        self._step_bad = False
        self._buffers: list[torch.Tensor] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._undo = StepUndo()  # the pending post-step restores
        #: Why this guard stopped the current fit (None while it did not): a run that ends so has failed.
        self.stop_reason: str | None = None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, policy=self.policy)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_reason = None
        self._loss_ok = self._step_loss = None
        self._buffers = None
        self._checked_step = -1
        if self.policy == "rollback":
            self._snapshot = take_snapshot(pl_module, trainer.optimizers, trainer.global_step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # with gradient accumulation several batches make one step: what is gathered for a step (loss flags, the
        # step loss, the BatchNorm statistics from before its first batch) is reset when the step has consumed it
        self._step_bad = False
        self._batch_start_step = trainer.global_step
        if self.policy == "skip_step" and self._buffers is None:  # a bad step's forwards moved the BN statistics
            self._buffers = copy_buffers(pl_module)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss.detach()).all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok
        if self.divergence_factor is not None:
            value = loss.detach().float().sum()
            self._step_loss = value if self._step_loss is None else self._step_loss + value

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        if self.check_grads:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            ok = ok.to(grads[0].device) & finite_flag(grads) if grads else ok
        self._loss_ok = None
        step_loss, self._step_loss = self._step_loss, None
        diverged = False
        if self.divergence_factor is None:
            bad = not bool(ok)  # the one host sync per step: the step must be decided before it happens
            if trainer.world_size > 1:
                bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        else:
            bad, diverged = self._decide(trainer, ok, step_loss)
        if not bad and not diverged:
            return
        why = "non-finite loss/gradient" if bad else (
            f"loss above {self.divergence_factor:g} x the reference {self.reference:.4g} for "
            f"{self.divergence_window} step(s) in a row")
        self._step_bad = True
        optimizer = unwrap_optimizer(optimizer)  # a LightningOptimizer wraps the torch one
        if self.policy != "rollback":
            self._undo_after_step(optimizer, _copy_step_state(optimizer))
        for group in optimizer.param_groups:  # drop this step's update
            for p in group["params"]:
                p.grad = None
        step = trainer.global_step
        self.bad_steps.append(step)
        if diverged and not bad:
            self.diverged_steps.append(step)
        self.consecutive += 1
        if self.policy == "stop":
            log.error("NaNGuard: %s at step %d; update dropped, stopping", why, step)
            trainer.should_stop = True
            self.stop_reason = f"NaNGuard: {why} at step {step} (policy stop)"
        elif self.policy == "skip_step":
            log.warning("NaNGuard: %s at step %d; update dropped", why, step)
            restore_buffers_(pl_module, self._buffers)
        else:
            if diverged:
                log.warning("NaNGuard: %s at step %d; rolling back", why, step)
                self.divergence.restart_count()  # the losses counted belong to the weights rolled back
            self._undo_after_step(optimizer, None, lambda: self._rollback(trainer, pl_module, step))
        if self.consecutive >= self.max_consecutive and not trainer.should_stop:
            log.error("NaNGuard: %d bad steps in a row; stopping", self.consecutive)
            trainer.should_stop = True
            self.stop_reason = f"NaNGuard: {self.consecutive} bad steps in a row, the last at step {step} ({why})"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._flush_pending()
        if trainer.global_step == self._batch_start_step:  # accumulating: no optimizer step ended in this batch
            return
        self._buffers = None
        if self._step_bad:
            return
        self.consecutive = 0
        if self.policy == "rollback" and trainer.global_step % self.snapshot_every_n_steps == 0:
            self._snapshot = take_snapshot(pl_module, trainer.optimizers, trainer.global_step)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not self.check_on_save:
            return
        bad = non_finite_entries(checkpoint)
        if has_dtensors(pl_module) and trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            bad = bad or ["a shard on another rank"]  # sharded: each rank checked its own, all refuse together
        if bad:
            raise NonFiniteCheckpointError(
                f"NaNGuard: refusing to write a checkpoint at step {trainer.global_step} with non-finite values in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the previous checkpoint is kept"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "bad_steps": list(self.bad_steps), "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale, "consecutive": self.consecutive,
                "diverged_steps": list(self.diverged_steps), **self.divergence.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_steps = [int(s) for s in state_dict.get("bad_steps", [])]
        self.rollbacks = int(state_dict.get("rollbacks", 0))
        self.lr_scale = float(state_dict.get("lr_scale", 1.0))
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.diverged_steps = [int(s) for s in state_dict.get("diverged_steps", [])]
        self.divergence.load_state_dict(state_dict)

    @property
    def reference(self) -> float:
        """The reference loss: the mean of the first ``divergence_ref_steps`` finite step losses (NaN before any)."""
        return self.divergence.reference

    @property
    def ref_count(self) -> int:
        return self.divergence.ref_count

    @property
    def above(self) -> int:
        return self.divergence.above

    def _decide(self, trainer: pl.Trainer, ok: torch.Tensor, step_loss: torch.Tensor | None) -> tuple[bool, bool]:
        """(non-finite, diverged) for this step, agreed by all ranks: one collective and one host sync."""
        first = trainer.global_step != self._checked_step  # later closure evaluations of a step are not counted
        self._checked_step = trainer.global_step
        device = step_loss.device if step_loss is not None else ok.device
        has_loss = step_loss is not None and first
        loss = step_loss if step_loss is not None and first else torch.zeros((), device=device)
        packed = torch.stack([(~ok).float().to(device), loss, torch.tensor(float(has_loss), device=device)])
        if trainer.world_size > 1:  # any rank non-finite = all; the step loss averaged over the ranks
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
        n_bad, loss_sum, n_loss = packed.tolist()  # the host sync: the step must be decided before it happens
        if not n_loss:
            return n_bad > 0, False
        return n_bad > 0, self.divergence.observe(loss_sum / n_loss)

    def _undo_after_step(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any] | None,
                         then: Any = None) -> None:
        """Right after ``optimizer.step`` returns, put ``saved`` back (and call ``then``); once per bad step."""
        self._undo.after_step(optimizer, saved, then)

    def _flush_pending(self) -> None:
        """Restore now what a step that never ran left pending (a GradScaler skips ``optimizer.step`` on inf)."""
        self._undo.flush()

    @property
    def _pending(self) -> dict[int, Any]:
        return self._undo.pending

    def _rollback(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        snap = self._snapshot
        if snap is None:
            log.error("NaNGuard: non-finite step %d and no snapshot to roll back to; update dropped", step)
            return
        restore_snapshot(pl_module, trainer.optimizers, snap)
        scale_lr_(trainer.optimizers, [config.scheduler for config in trainer.lr_scheduler_configs], self.lr_factor)
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        log.warning("NaNGuard: non-finite loss/gradient at step %d; rolled back to step %d, lr x%g (now x%g)",
                    step, snap["step"], self.lr_factor, self.lr_scale)

