"""GradientClipping: norm / value / adaptive (AGC) / percentile (AutoClip) clipping as a callback."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from lit_tricks.compat import log_step_value, sharded_strategy_name, step_value_read, unwrap_optimizer
from lit_tricks.fault.state_keys import adopt_resized_state, cached_state_key, warn_changed_args
from lit_tricks.functional.clip import (
    CLIP_MODES,
    adaptive_clip_grad_,
    autoclip_threshold,
    clip_grad_norm_,
    clip_grad_value_,
    grad_norm,
)
from lit_tricks.functional.clip_history import ClipHistory
from lit_tricks.validation import ArgumentError, check_choice, check_number

__all__ = ["GradientClipping"]

_STATE_VERSION = 3  # 3: "pushed" (norms held by the ring) beside "steps"


class GradientClipping(Callback):
    """Clip gradients before every optimizer step, after Lightning has unscaled them under AMP.

    Modes (see :data:`lit_tricks.functional.clip.CLIP_MODES`): ``norm`` (global ``norm_type``-norm <= ``max_norm``),
    ``value`` (entries clamped to ``±max_value``), ``agc`` (unit-wise ``||G_i|| <= agc_factor * ||W_i||``, Brock et al.
    2021), ``auto`` (global norm clipped at the ``percentile``-th percentile of the last ``history`` pre-clip norms,
    AutoClip, Seetharaman et al. 2020).

    Logs ``<log_prefix>/grad_norm`` (pre-clip global norm) and ``<log_prefix>/clipped_fraction`` (fraction of steps
    so far whose gradients were changed) every step when ``log=True``, as Lightning's every-step ``self.log`` leaves
    them, with ``self.log`` only where a value is read (:func:`lit_tricks.compat.log_step_value`); both are tensors,
    so logging causes no host sync beyond Lightning's own. The norm history and counters are callback state, so
    resume is exact. Hook: ``on_before_optimizer_step``, which Lightning's precision plugin calls after
    ``scaler.unscale_``, also for the ``opt.step()`` calls of manual optimization. Under ``ModelParallelStrategy``
    (FSDP2) the gradients are DTensor shards: ``norm``, ``auto`` and ``agc`` use global norms (squared local norms
    all-reduced over the shards, equal to ``torch.nn.utils.clip_grad_norm_`` on the gathered gradients), ``value``
    clamps locally; FSDP1 is refused.

    Several optimizers (Lightning's semantics: ``configure_gradient_clipping`` is called per optimizer): each
    optimizer's step clips that optimizer's parameters only, with their own global norm (as
    ``torch.nn.utils.clip_grad_norm_`` over that optimizer's parameters); ``auto`` keeps one norm history per
    optimizer (index in ``trainer.optimizers``), and the counters are per optimizer too. ``state_dict`` holds all
    of them (``per_optimizer``, keyed by index); the top-level entries are optimizer 0's. Optimizer ``i > 0``
    logs ``<log_prefix>/grad_norm_opt<i>`` and ``<log_prefix>/clipped_fraction_opt<i>``.
    """

    def __init__(
        self,
        mode: str = "norm",
        *,
        max_norm: float = 5.0,
        norm_type: float = 2.0,
        max_value: float | None = None,
        agc_factor: float = 0.01,
        percentile: float = 10.0,
        history: int = 1000,
        agc_eps: float = 1e-3,
        log: bool = True,
        log_prefix: str = "grad",
    ) -> None:
        check_choice("mode", mode, sorted(CLIP_MODES), owner="GradientClipping")
        if mode == "norm":
            check_number("max_norm", max_norm, 0.0, lo_open=True, owner="GradientClipping")
        if mode == "value":
            if max_value is None:
                raise ArgumentError("max_value", max_value, "must be a number > 0 for mode='value'", "GradientClipping")
            check_number("max_value", max_value, 0.0, lo_open=True, owner="GradientClipping")
        if mode == "agc":
            check_number("agc_factor", agc_factor, 0.0, lo_open=True, owner="GradientClipping")
        check_number("percentile", percentile, 0.0, 100.0, hi_open=False, owner="GradientClipping")
        check_number("history", history, 1, integer=True, owner="GradientClipping")
        if not float(norm_type) > 0:  # inf allowed (the max norm)
            raise ArgumentError("norm_type", norm_type, "must be > 0 (or inf)", "GradientClipping")
        self.mode = mode
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.max_value = None if max_value is None else float(max_value)
        self.agc_factor = float(agc_factor)
        self.agc_eps = float(agc_eps)
        self.percentile = float(percentile)
        self.history = int(history)
        self.log = log
        self.log_prefix = log_prefix
        #: pre-clip norms, steps and clipped steps per optimizer (Trainer-free; all restored by load_state_dict)
        self.clip_history = ClipHistory(self.history)

    @property
    def state_key(self) -> str:
        return cached_state_key(self,
            mode=self.mode, max_norm=self.max_norm, norm_type=self.norm_type, max_value=self.max_value,
            agc_factor=self.agc_factor, percentile=self.percentile,
        )  # not ``history``: it sizes the state, which a resume with another value keeps (the newest norms)

    # ------------------------------------------------------------------ the clipping itself
    def select_optimizer(self, optimizer_idx: int) -> None:
        """Make ``norm_history``, ``steps`` and ``clipped_steps`` those of optimizer ``optimizer_idx``."""
        self.clip_history.select(optimizer_idx)

    @property
    def norm_history(self) -> Tensor:
        """The ring of pre-clip norms of the selected optimizer."""
        return self.clip_history.norm_history

    @property
    def steps(self) -> int:
        """Optimizer steps seen by the selected optimizer."""
        return self.clip_history.steps

    @property
    def clipped_steps(self) -> Tensor:
        """How many of those steps were clipped (0-d tensor on the gradients' device)."""
        return self.clip_history.clipped_steps

    def clip_(self, parameters: Iterable[Tensor], optimizer_idx: int = 0) -> Tensor:
        """Clip the gradients of ``parameters`` in place with this callback's mode; returns the pre-clip global norm.

        Updates the history and counters of optimizer ``optimizer_idx``.
        """
        params = [p for p in parameters if p.grad is not None]
        return self._clip_present(params, [p.grad for p in params if p.grad is not None], optimizer_idx)

    def _clip_present(self, params: list[Tensor], grads: list[Tensor], optimizer_idx: int) -> Tensor:
        """:meth:`clip_` of ``params``, all with a gradient (``grads``, in their order)."""
        self.select_optimizer(optimizer_idx)
        if not grads:
            return torch.zeros(())
        history = self.clip_history
        history.to(grads[0].device)
        if self.mode == "norm":
            norm = clip_grad_norm_(params, self.max_norm, self.norm_type)
            clipped = norm > self.max_norm
        elif self.mode == "auto":
            norm = grad_norm(grads, self.norm_type)
            history.push(norm)
            threshold = autoclip_threshold(history.norm_history, history.pushed, self.percentile)
            clip_grad_norm_(params, threshold, self.norm_type, total_norm=norm)
            clipped = norm > threshold
        elif self.mode == "value":
            max_value = float(self.max_value or 0.0)  # not None: checked in __init__
            norm = grad_norm(grads, self.norm_type)
            clipped = grad_norm(grads, float("inf")) > max_value
            clip_grad_value_(params, max_value)
        else:  # agc
            norm = grad_norm(grads, self.norm_type)
            clipped = adaptive_clip_grad_(params, self.agc_factor, self.agc_eps)
        if self.mode != "auto":
            history.push(norm)
        history.count(clipped)
        return norm

    @property
    def clipped_fraction(self) -> Tensor:
        """Fraction of the optimizer steps so far whose gradients were changed by clipping (0-d tensor)."""
        return self.clip_history.clipped_fraction

    def filled_history(self) -> Tensor:
        """The pre-clip norms of the last ``min(steps, history)`` steps, oldest first."""
        return self.clip_history.filled()

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        sharded = sharded_strategy_name(trainer.strategy)
        if sharded and not isinstance(trainer.strategy, ModelParallelStrategy):
            raise ValueError(
                f"GradientClipping under {sharded} would clip each rank's flat shard by its own norm; use "
                "ModelParallelStrategy (FSDP2: global norms over DTensor shards) or gradient_clip_algorithm='value'"
            )
        if getattr(trainer, "gradient_clip_val", None):
            raise ValueError(
                "GradientClipping callback and Trainer(gradient_clip_val="
                f"{trainer.gradient_clip_val!r}) both clip gradients: set gradient_clip_val=None (or 0), "
                "or remove the GradientClipping callback"
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        idx = 0
        if len(trainer.optimizers) > 1:
            raw = unwrap_optimizer(optimizer)
            idx = next((i for i, opt in enumerate(trainer.optimizers) if opt is raw), 0)
        norm = self._clip_present(params, [p.grad for p in params if p.grad is not None], idx)
        if not self.log:
            return
        tail = f"_opt{idx}" if idx else ""
        names = (f"{self.log_prefix}/grad_norm{tail}", f"{self.log_prefix}/clipped_fraction{tail}")
        # self.log when a logger writes it now, a callback reads it, or a run ends with it (else held to the batch end)
        read = step_value_read(trainer, names)
        log_step_value(pl_module, read, names[0], norm.detach, on_step=True, on_epoch=False)
        history = self.clip_history  # the fraction as of this step, computed only when logged
        fraction = functools.partial(torch.div, history.clipped_steps, max(history.steps, 1))
        log_step_value(pl_module, read, names[1], fraction, on_step=True, on_epoch=False)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        adopt_resized_state(self, checkpoint, sizing=("history",))  # saved when history was part of the key
        warn_changed_args(self, checkpoint)  # state saved under other arguments: say that it is not restored

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "mode": self.mode, **self.clip_history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clip_history.load_state_dict(state_dict)
