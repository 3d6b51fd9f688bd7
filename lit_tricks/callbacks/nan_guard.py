"""NaNGuard: catch a non-finite loss or gradient, or a loss that has exploded, before the optimizer step, and never
checkpoint non-finite weights."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lit_tricks.compat import unwrap_optimizer
from lit_tricks.fault.state_keys import warn_changed_args
from lit_tricks.functional.lr_scale import scale_lr_

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


def _finite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: every element of every tensor is finite (one fused reduction, no host sync)."""
    if not tensors:
        return torch.tensor(True)
    # max |x| per tensor: NaN if any element is NaN, inf if any is inf; exact (no overflow, unlike the 2-norm) and no
    # tensor-sized temporaries
    peaks = torch._foreach_norm([t.detach() for t in tensors], ord=float("inf"))
    return torch.isfinite(torch.stack([p.float().to(peaks[0].device) for p in peaks])).all()


class NaNGuard(Callback):
    """Check the loss and every gradient at each optimizer step, before the step, and apply ``policy`` when one is
    NaN/inf.

    How a bad step is dropped, for any LightningModule (automatic or manual optimization): in
    ``on_before_optimizer_step`` (Lightning calls it inside ``optimizer.step``, after the closure ran backward) the
    guard copies the optimizer's parameters and its per-parameter state (momentum buffers, Adam moments and step
    counters), sets every gradient to ``None`` and registers a one-shot ``Optimizer.register_step_post_hook`` that
    puts the copies back right after the step. So whatever else runs in that step (the module's own
    ``on_before_optimizer_step``, e.g. TrickModule's decoupled weight decay, an optimizer that decays parameters
    without a gradient) leaves no trace: parameters and optimizer state are bit-identical to before the step. Only
    the bad steps pay for the copy. The lr scheduler and the global step still advance (the step happened, with no
    effect). When the step never runs (a GradScaler skips ``optimizer.step`` after an inf), the restore happens at
    batch end instead and no hook is left behind. Under DDP the ranks agree (any rank bad = all skip). ``rollback``
    restores its snapshot in the same post-step hook, so nothing of the bad step survives it either.

    ``policy``: one of :data:`POLICIES`. ``lr_factor``: rollback multiplies every param group's lr (and the lr
    schedulers' ``base_lrs``) by it. ``snapshot_every_n_steps``: how often rollback's in-memory snapshot (a copy of
    the weights, buffers and optimizer state) is refreshed after a good step; 1 = the step just before.
    ``max_consecutive``: stop after this many bad steps in a row (any policy). ``check_on_save``: refuse (raise
    :class:`NonFiniteCheckpointError`) to write a checkpoint whose weights or optimizer state are not finite, so the
    last good checkpoint is never replaced by a broken one. Lightning alone trains on after a NaN loss and its
    ModelCheckpoint overwrites ``last.ckpt`` with NaN weights.

    Divergence (off unless ``divergence_factor`` is set): a finite loss that explodes is a bad step too, handled by
    the same ``policy``. The step's loss is the sum of the losses passed to backward since the last optimizer step
    (with gradient accumulation Lightning divides each micro-batch loss by ``accumulate_grad_batches``, so this is the
    mean over the accumulated batch). The reference ``L_ref`` is the mean of the first ``divergence_ref_steps`` finite
    step losses; a step is bad when the loss was above ``divergence_factor * L_ref`` at each of the last
    ``divergence_window`` steps (one noisy batch does not trigger it; ``divergence_window=1`` acts on the first). Under
    DDP the step loss is averaged over the ranks first (in the same collective as the NaN flag), so every rank holds
    the same reference and counter. Both are in :meth:`state_dict`: a resumed run keeps its reference. After a
    rollback the counter restarts. With ``skip_step`` a loss that stays high drops every step until
    ``max_consecutive`` stops the run.
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
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {sorted(POLICIES)}, got {policy!r}")
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"lr_factor: expected a number in (0, 1], got {lr_factor!r}")
        if int(snapshot_every_n_steps) < 1:
            raise ValueError(f"snapshot_every_n_steps: expected an integer >= 1, got {snapshot_every_n_steps!r}")
        if int(max_consecutive) < 1:
            raise ValueError(f"max_consecutive: expected an integer >= 1, got {max_consecutive!r}")
        if divergence_factor is not None and not float(divergence_factor) > 1.0:
            raise ValueError(f"divergence_factor: expected None (off) or a number > 1, got {divergence_factor!r}")
        if int(divergence_ref_steps) < 1:
            raise ValueError(f"divergence_ref_steps: expected an integer >= 1, got {divergence_ref_steps!r}")
        if int(divergence_window) < 1:
            raise ValueError(f"divergence_window: expected an integer >= 1, got {divergence_window!r}")
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
        self.ref_sum = 0.0  # sum and count of the first divergence_ref_steps finite step losses
        self.ref_count = 0
        self.above = 0  # steps in a row whose loss was above divergence_factor * reference
        # per-step, in memory
        self._loss_ok: torch.Tensor | None = None
        self._step_loss: torch.Tensor | None = None  # sum of the losses passed to backward since the last step
        self._checked_step = -1  # global step whose loss the divergence check has seen (L-BFGS re-evaluates)
        self._batch_start_step = -1
        self._warned_ref = False
        self._step_bad = False
        self._buffers: list[torch.Tensor] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._pending: dict[int, Any] = {}  # optimizer id -> its pending post-step restore
        #: Why this guard stopped the current fit (None while it did not): a run that ends so has failed.
        self.stop_reason: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(policy=self.policy)

    # ---- hooks -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_reason = None
        self._loss_ok = self._step_loss = None
        self._buffers = None
        self._checked_step = -1
        if self.policy == "rollback":
            self._take_snapshot(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # with gradient accumulation several batches make one step: what is gathered for a step (loss flags, the
        # step loss, the BatchNorm statistics from before its first batch) is reset when the step has consumed it
        self._step_bad = False
        self._batch_start_step = trainer.global_step
        if self.policy == "skip_step" and self._buffers is None:  # a bad step's forwards moved the BN statistics
            buffers = [b for b in pl_module.buffers() if b.is_floating_point() or b.dtype == torch.long]
            self._buffers = [b.detach().clone() for b in buffers]

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
            ok = ok.to(grads[0].device) & _finite_flag(grads) if grads else ok
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
            self._restore_buffers(pl_module)
        else:
            if diverged:
                log.warning("NaNGuard: %s at step %d; rolling back", why, step)
                self.above = 0  # the losses counted belong to the weights rolled back
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
            self._take_snapshot(trainer, pl_module)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not self.check_on_save:
            return
        bad = _non_finite_entries(checkpoint)
        if bad:
            raise NonFiniteCheckpointError(
                f"NaNGuard: refusing to write a checkpoint at step {trainer.global_step} with non-finite values in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the previous checkpoint is kept"
            )

    # ---- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "bad_steps": list(self.bad_steps), "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale, "consecutive": self.consecutive,
                "diverged_steps": list(self.diverged_steps), "ref_sum": self.ref_sum, "ref_count": self.ref_count,
                "above": self.above}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_steps = [int(s) for s in state_dict.get("bad_steps", [])]
        self.rollbacks = int(state_dict.get("rollbacks", 0))
        self.lr_scale = float(state_dict.get("lr_scale", 1.0))
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.diverged_steps = [int(s) for s in state_dict.get("diverged_steps", [])]
        self.ref_sum = float(state_dict.get("ref_sum", 0.0))
        self.ref_count = int(state_dict.get("ref_count", 0))
        self.above = int(state_dict.get("above", 0))

    # ---- divergence ------------------------------------------------------------------------------------------
    @property
    def reference(self) -> float:
        """The reference loss: the mean of the first ``divergence_ref_steps`` finite step losses (NaN before any)."""
        return self.ref_sum / self.ref_count if self.ref_count else math.nan

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
        return n_bad > 0, self.observe_loss(loss_sum / n_loss)

    def observe_loss(self, value: float) -> bool:
        """Count one step loss; True when it is the ``divergence_window``-th in a row above
        ``divergence_factor * reference`` (the reference is gathered from the first ``divergence_ref_steps``)."""
        if self.divergence_factor is None or not math.isfinite(value):
            return False  # a non-finite loss is the NaN check's: it leaves the reference and the counter alone
        if self.ref_count < self.divergence_ref_steps:
            self.ref_sum += value
            self.ref_count += 1
            return False
        if self.reference <= 0:
            if not self._warned_ref:
                self._warned_ref = True
                log.warning("NaNGuard: reference loss %.4g <= 0; the divergence check (a multiple of it) is off",
                            self.reference)
            return False
        self.above = self.above + 1 if value > self.divergence_factor * self.reference else 0
        return self.above >= self.divergence_window

    # ---- policies --------------------------------------------------------------------------------------------
    def _undo_after_step(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any] | None,
                         then: Any = None) -> None:
        """Right after ``optimizer.step`` returns, put ``saved`` back (and call ``then``); once per bad step."""
        if id(optimizer) in self._pending:
            return  # L-BFGS evaluates its closure several times per step: keep the state from before the first
        handles: list[Any] = []

        def restore() -> None:
            self._pending.pop(id(optimizer), None)
            for handle in handles:
                handle.remove()
            if saved is not None:
                _restore_step_state(optimizer, saved)
            if then is not None:
                then()

        register = getattr(optimizer, "register_step_post_hook", None)
        if not callable(register):  # not a torch Optimizer: restore now (what runs in the step may still act)
            restore()
            return
        handles.append(register(lambda opt, args, kwargs: restore()))
        self._pending[id(optimizer)] = restore

    def _flush_pending(self) -> None:
        """Restore now what a step that never ran left pending (a GradScaler skips ``optimizer.step`` on inf)."""
        for restore in list(self._pending.values()):
            restore()

    def _restore_buffers(self, pl_module: pl.LightningModule) -> None:
        if self._buffers is None:
            return
        buffers = [b for b in pl_module.buffers() if b.is_floating_point() or b.dtype == torch.long]
        with torch.no_grad():
            for dst, src in zip(buffers, self._buffers):
                dst.copy_(src)

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            self._snapshot = {
                "step": trainer.global_step,
                "model": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "optimizers": [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers],
            }

    def _rollback(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        snap = self._snapshot
        if snap is None:
            log.error("NaNGuard: non-finite step %d and no snapshot to roll back to; update dropped", step)
            return
        with torch.no_grad():
            pl_module.load_state_dict(snap["model"])
        for opt, state in zip(trainer.optimizers, snap["optimizers"]):
            opt.load_state_dict(copy.deepcopy(state))  # a copy: the optimizer must not alias the snapshot
        scale_lr_(trainer.optimizers, [config.scheduler for config in trainer.lr_scheduler_configs], self.lr_factor)
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        log.warning("NaNGuard: non-finite loss/gradient at step %d; rolled back to step %d, lr x%g (now x%g)",
                    step, snap["step"], self.lr_factor, self.lr_scale)


def _copy_step_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of what ``optimizer.step`` may change: its parameters and their per-parameter state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        values = [p.detach().clone() for p in params]
    state = {i: copy.deepcopy(optimizer.state[p]) for i, p in enumerate(params) if p in optimizer.state}
    return {"params": params, "values": values, "state": state}


def _restore_step_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    with torch.no_grad():
        for p, v in zip(saved["params"], saved["values"]):
            p.copy_(v)
    for i, p in enumerate(saved["params"]):
        if i in saved["state"]:
            optimizer.state[p] = saved["state"][i]
        else:
            optimizer.state.pop(p, None)


def _non_finite_entries(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the floating tensors in a checkpoint's weights and optimizer states that hold NaN/inf."""
    named: list[tuple[str, torch.Tensor]] = [
        (f"state_dict.{k}", v) for k, v in checkpoint.get("state_dict", {}).items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    for i, opt in enumerate(checkpoint.get("optimizer_states", [])):
        for pid, st in opt.get("state", {}).items():
            named += [(f"optimizer_states[{i}].state[{pid}].{k}", v) for k, v in st.items()
                      if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not named:
        return []
    if bool(_finite_flag([v for _, v in named])):
        return []
    return [name for name, v in named if not bool(torch.isfinite(v).all())]
