"""Multiply the learning rates of optimizers and their schedulers in place (one rule for every caller).

Used by linear LR scaling with the global batch (:mod:`lit_tricks.trainers.strategies`, Goyal et al. 2017,
"Accurate, Large Minibatch SGD": a k times larger global batch, a k times larger lr) and by ``NaNGuard``'s rollback
(the lr cut after a non-finite step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["scale_lr_"]

#: The param-group entries that hold a learning rate: the current one and the scheduler's base (``initial_lr``).
_LR_KEYS = ("lr", "initial_lr")


def _scaled(value: Any, factor: float) -> Any:
    return value * factor if isinstance(value, float | int | torch.Tensor) and not isinstance(value, bool) else value


def scale_lr_(optimizers: Iterable[torch.optim.Optimizer], schedulers: Iterable[Any], factor: float) -> None:
    """Multiply by ``factor``: every param group's ``lr`` and ``initial_lr`` (numbers or tensors; other values and
    missing keys are left alone), and every scheduler's ``base_lrs`` and last computed lrs (``get_last_lr()``), so
    the schedule goes on from the scaled values."""
    for opt in optimizers:
        for group in opt.param_groups:
            for key in _LR_KEYS:
                if key in group:
                    group[key] = _scaled(group[key], factor)
    for sched in schedulers:
        base = getattr(sched, "base_lrs", None)
        if isinstance(base, list):
            sched.base_lrs = [_scaled(lr, factor) for lr in base]
        last = getattr(sched, "_last_lr", None)  # torch's LRScheduler keeps get_last_lr() here
        if isinstance(last, list):
            sched._last_lr = [_scaled(lr, factor) for lr in last]
