"""``Schedule``: warm-up + decay body + optional warm restarts, one torch ``LRScheduler`` stepped per optimizer step."""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_tricks.functional import schedules as F
from lit_tricks.schedules.bodies import make_body

__all__ = ["UNITS", "Schedule"]

UNITS = ("step", "epoch")
_VERSION = 1
_STATE_KEYS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class Schedule(LRScheduler):
    """Learning rate = warm-up, then ``body``, restarted every cycle when ``T_0`` is set; per optimizer step.

    The lr at optimizer step ``s`` is the closed form :func:`lit_tricks.functional.schedules.lr_at` (computed fresh
    every step, never chained), so ``state_dict`` only needs the step counter and resume is exact.

    Resume rule (one rule for every step, the first included): after a restore the lr of optimizer step ``s`` is
    the closed form of the *new* configuration (its warm-up, body, ``total_steps``, restarts) at the restored step
    counter ``s``, with the base lrs of the checkpoint (as Lightning restores the optimizer's ``initial_lr``, and as
    NaNGuard's lr cuts live there). :meth:`load_state_dict` writes that lr into the optimizer at once, so the first
    step after resume does not run with the lr the old run's optimizer state ended with. Resuming an unchanged
    configuration is bit-exact; a longer ``max_epochs`` stretches the rest of the schedule from the step reached.

    Args:
        body: a :class:`~lit_tricks.schedules.bodies.Body`, a name from ``BODIES`` (default arguments) or None
            (constant).
        warmup_steps: warm-up length in optimizer steps (give one of ``warmup_steps``, ``warmup_epochs``,
            ``warmup_fraction``; the others stay 0 / None).
        warmup_epochs: warm-up length in epochs.
        warmup_fraction: warm-up length as a fraction of ``total_steps``.
        warmup: ``linear`` | ``exponential`` | ``cosine`` ramp from ``start_factor * base`` to ``base``.
        T_0: SGDR warm restarts (Loshchilov & Hutter, 2017): after warm-up the body restarts every cycle, cycle
            ``i`` lasting ``T_0 * T_mult**i`` units and peaking at ``base * cycle_decay**i``.
        T_mult: growth factor of the cycle length.
        cycle_decay: factor of each cycle's peak lr.
        unit: unit of ``T_0`` and of the body's lengths and rates (``step`` or ``epoch``; epochs need
            ``steps_per_epoch``).
        total_steps: optimizer steps of the whole run; :func:`lit_tricks.schedules.lr_scheduler_config` fills it
            and ``steps_per_epoch`` from the Trainer (``estimated_stepping_batches``: gradient accumulation and
            devices included).
        steps_per_epoch: optimizer steps of one epoch.
    """

    interval = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        body: Any = "cosine",
        *,
        warmup_steps: int = 0,
        warmup_epochs: float | None = None,
        warmup_fraction: float | None = None,
        warmup: str = "linear",
        start_factor: float = 0.01,
        T_0: float | None = None,
        T_mult: int = 1,
        cycle_decay: float = 1.0,
        unit: str = "step",
        total_steps: float | None = None,
        steps_per_epoch: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.body = make_body(body)
        self.total_steps = _finite(total_steps)
        self.steps_per_epoch = _finite(steps_per_epoch)
        if unit not in UNITS:
            raise ValueError(f"unit: expected one of {list(UNITS)}, got {unit!r}")
        if warmup not in F.WARMUP_MODES:
            raise ValueError(f"warmup: expected one of {list(F.WARMUP_MODES)}, got {warmup!r}")
        in_range = isinstance(start_factor, int | float) and 0 <= start_factor <= 1
        if not in_range or (warmup == "exponential" and start_factor == 0):
            bound = "(0, 1]" if warmup == "exponential" else "[0, 1]"
            raise ValueError(f"start_factor: expected a number in {bound} for warmup={warmup!r}, got {start_factor!r}")
        if not (isinstance(T_mult, int) and T_mult >= 1):
            raise ValueError(f"T_mult: expected an int >= 1, got {T_mult!r}")
        if not (isinstance(cycle_decay, int | float) and cycle_decay > 0):
            raise ValueError(f"cycle_decay: expected a number > 0, got {cycle_decay!r}")
        self.unit, self.warmup, self.start_factor = unit, warmup, float(start_factor)
        self.T_mult, self.cycle_decay = T_mult, float(cycle_decay)
        self.steps_per_unit = 1.0 if unit == "step" else self._need_steps_per_epoch("unit='epoch'")
        self.warmup_steps = self._warmup_length(warmup_steps, warmup_epochs, warmup_fraction)
        self.T_0: int | None = None
        if T_0 is not None:
            if not (isinstance(T_0, int | float) and T_0 > 0):
                raise ValueError(f"T_0: expected a number > 0 (cycle length in {unit}s), got {T_0!r}")
            self.T_0 = max(1, round(T_0 * self.steps_per_unit))
        self.body_steps: int | None = None
        if self.total_steps is not None:
            self.body_steps = max(1, int(self.total_steps) - self.warmup_steps)
        elif self.body.needs_length and self.T_0 is None:
            raise ValueError(
                f"Schedule(body={type(self.body).__name__}) decays over the run and needs total_steps (finite); "
                "lit_tricks.schedules.lr_scheduler_config fills it from trainer.estimated_stepping_batches"
            )
        self._body_fn = self.body.bind(self.steps_per_unit, self.warmup_steps)
        super().__init__(optimizer, last_epoch)

    def _need_steps_per_epoch(self, what: str) -> float:
        if self.steps_per_epoch is None or self.steps_per_epoch <= 0:
            raise ValueError(
                f"{what} needs steps_per_epoch > 0 (optimizer steps per epoch), got {self.steps_per_epoch!r}; "
                "lit_tricks.schedules.lr_scheduler_config fills it from the Trainer"
            )
        return float(self.steps_per_epoch)

    def _warmup_length(self, steps: int, epochs: float | None, fraction: float | None) -> int:
        given = {k: v for k, v in (("warmup_epochs", epochs), ("warmup_fraction", fraction)) if v is not None}
        if steps != 0:
            given = {"warmup_steps": steps, **given}
        if len(given) > 1:
            raise ValueError(f"give one of warmup_steps, warmup_epochs, warmup_fraction (set the others to null/0), "
                             f"got {given}")
        if epochs is not None:
            if not (isinstance(epochs, int | float) and epochs >= 0):
                raise ValueError(f"warmup_epochs: expected a number >= 0, got {epochs!r}")
            return round(epochs * self._need_steps_per_epoch("warmup_epochs"))
        if fraction is not None:
            if not (isinstance(fraction, int | float) and 0 <= fraction <= 1):
                raise ValueError(f"warmup_fraction: expected a number in [0, 1], got {fraction!r}")
            if self.total_steps is None:
                raise ValueError(
                    "warmup_fraction needs total_steps (filled by lit_tricks.schedules.lr_scheduler_config)"
                )
            return round(fraction * self.total_steps)
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"warmup_steps: expected an int >= 0, got {steps!r}")
        return steps

    def lr_at(self, step: int, base_lr: float) -> float:
        """The closed-form lr at optimizer step ``step`` for a param group whose base lr is ``base_lr``."""
        return F.lr_at(
            step, base_lr, self._body_fn, warmup_steps=self.warmup_steps, warmup=self.warmup,
            start_factor=self.start_factor, body_steps=self.body_steps, T_0=self.T_0, T_mult=self.T_mult,
            cycle_decay=self.cycle_decay,
        )

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The lrs for step ``last_epoch`` (the number of optimizer steps taken so far)."""
        return [self.lr_at(self.last_epoch, float(base)) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def cycle_ends(self) -> list[int]:
        """Optimizer-step indices (``trainer.global_step`` after the cycle's last step) where restart cycles end.

        ``[]`` without restarts (``T_0`` unset) or without a known ``total_steps``; CheckpointEnsemble
        (``at_cycle_ends=True``) snapshots the model at these steps.
        """
        if self.T_0 is None or self.total_steps is None:
            return []
        return F.cycle_ends(int(self.total_steps), self.warmup_steps, self.T_0, self.T_mult)

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed progress only (loads with ``torch.load(weights_only=True)``); the shape comes from config."""
        state = {key: self.__dict__[key] for key in _STATE_KEYS if key in self.__dict__}
        state["base_lrs"] = [float(v) for v in state.get("base_lrs", [])]
        state["_last_lr"] = [float(v) for v in state.get("_last_lr", [])]
        state["version"] = _VERSION
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter and base lrs saved by :meth:`state_dict`."""
        for key in _STATE_KEYS:
            if key in state_dict:
                setattr(self, key, state_dict[key])
        self.last_epoch = int(state_dict.get("last_epoch", self.last_epoch))
        # the restored optimizer holds the old run's last lr: the next step uses this configuration's closed form
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def __repr__(self) -> str:
        restarts = f", T_0={self.T_0}, T_mult={self.T_mult}, cycle_decay={self.cycle_decay}" if self.T_0 else ""
        return (f"Schedule(body={self.body!r}, warmup_steps={self.warmup_steps}, warmup={self.warmup!r}, "
                f"start_factor={self.start_factor}, total_steps={self.total_steps}{restarts})")
