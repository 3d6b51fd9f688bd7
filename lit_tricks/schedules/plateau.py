"""``ReduceOnPlateau``: torch's ReduceLROnPlateau on a monitored metric, with an optional per-step warm-up."""

from __future__ import annotations

import weakref
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lit_tricks.functional import schedules as F

__all__ = ["ReduceOnPlateau"]

_VERSION = 2
_TRANSIENT = ("optimizer", "_hook_handle")


class ReduceOnPlateau(ReduceLROnPlateau):
    """Multiply the lr by ``factor`` when ``monitor`` stops improving for ``patience`` epochs; optional warm-up.

    ``monitor``: the logged metric Lightning passes to ``step`` (``lr_scheduler_config`` puts it in the config
    dict, interval "epoch"). The warm-up (``warmup_steps`` or ``warmup_epochs``, ``warmup``, ``start_factor`` as in
    :class:`~lit_tricks.schedules.schedule.Schedule`) runs per optimizer step through an optimizer step post-hook:
    lr = plateau lr * warmup factor(optimizer steps taken). Other arguments are torch's.

    The plateau lrs live in ``base_lrs`` (torch's name for the lrs a schedule multiplies), so an external lr change
    made through :func:`lit_tricks.functional.lr_scale.scale_lr_` (``NaNGuard``'s rollback cut, the linear scaling
    rule of ``trainers``) scales them too and the next plateau step or warm-up step keeps it.
    """

    interval = "epoch"

    def __init__(
        self,
        optimizer: Optimizer,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0.0,
        eps: float = 1e-8,
        *,
        warmup_steps: int = 0,
        warmup_epochs: float | None = None,
        warmup: str = "linear",
        start_factor: float = 0.01,
        steps_per_epoch: float | None = None,
        total_steps: float | None = None,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor: expected a logged metric name such as 'val/loss', got {monitor!r}")
        if warmup not in F.WARMUP_MODES:
            raise ValueError(f"warmup: expected one of {list(F.WARMUP_MODES)}, got {warmup!r}")
        if not (isinstance(start_factor, int | float) and 0 <= start_factor <= 1) or (
            warmup == "exponential" and start_factor == 0
        ):
            raise ValueError(f"start_factor: expected a number in [0, 1] (> 0 for exponential), got {start_factor!r}")
        if warmup_epochs is not None:
            if steps_per_epoch is None or not steps_per_epoch > 0:
                raise ValueError(f"warmup_epochs needs steps_per_epoch > 0, got {steps_per_epoch!r} "
                                 "(lit_tricks.schedules.lr_scheduler_config fills it from the Trainer)")
            warmup_steps = round(warmup_epochs * steps_per_epoch)
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"warmup_steps: expected an int >= 0, got {warmup_steps!r}")
        super().__init__(optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold,
                         threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps)
        self.monitor, self.warmup_steps, self.warmup, self.start_factor = monitor, warmup_steps, warmup, start_factor
        self.optimizer_steps = 0
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]  # the plateau lrs, before the warm-up
        self._hook_handle: Any = None
        if warmup_steps > 0:
            ref = weakref.ref(self)

            def after_step(opt: Optimizer, args: Any, kwargs: Any) -> None:
                me = ref()
                if me is not None:
                    me.optimizer_steps += 1
                    me._apply_warmup()

            self._hook_handle = optimizer.register_step_post_hook(after_step)
            self._apply_warmup()

    def _apply_warmup(self) -> None:
        f = F.warmup_factor(self.optimizer_steps, self.warmup_steps, self.start_factor, self.warmup)
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * f
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """One plateau check on ``metrics``; a reduction applies to the plateau lr, under the warm-up factor."""
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr
        super().step(metrics, epoch)
        self.base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._apply_warmup()

    @property
    def plateau_lrs(self) -> list[float]:
        """The plateau lrs (reduced by ``factor`` on plateaus, before the warm-up factor): ``base_lrs``."""
        return [float(lr) for lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state (no optimizer, no hook handle), loadable with ``torch.load(weights_only=True)``."""
        state = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}
        state["version"] = _VERSION
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the plateau counters, plateau lrs and warm-up progress."""
        state = {k: v for k, v in state_dict.items() if k not in (*_TRANSIENT, "version")}
        if "plateau_lrs" in state:  # version 1 named the plateau lrs so
            state["base_lrs"] = state.pop("plateau_lrs")
        super().load_state_dict(state)
        self._apply_warmup()

    def cycle_ends(self) -> list[int]:
        """No restart cycles: ``[]``."""
        return []
