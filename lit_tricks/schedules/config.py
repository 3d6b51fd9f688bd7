"""``lr_scheduler_config``: build a scheduler partial against a Trainer and return Lightning's lr_scheduler dict."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

__all__ = ["lr_scheduler_config", "trainer_steps"]


def trainer_steps(trainer: Any) -> tuple[float | None, float | None]:
    """``(total_steps, steps_per_epoch)`` in optimizer steps from a Trainer (None where unknown or infinite).

    ``total_steps = trainer.estimated_stepping_batches`` (accounts for gradient accumulation, devices, max_steps);
    ``steps_per_epoch = ceil(num_training_batches / accumulate_grad_batches)`` (Lightning steps on the last,
    partial accumulation window of an epoch).
    """
    if trainer is None:
        return None, None
    total = float(trainer.estimated_stepping_batches)  # loads the train dataloader when needed
    batches = float(trainer.num_training_batches)
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
    return (total if math.isfinite(total) and total > 0 else None), (float(per_epoch) if per_epoch else None)


def _unbound(factory: Callable[..., Any]) -> tuple[set[str] | None, set[str]]:
    """Parameter names ``factory`` accepts (None if it takes ``**kwargs``) and those already bound by a partial."""
    bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return set(), bound
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, bound
    return {p.name for p in params}, bound


def _interval(scheduler: Any) -> str:
    declared = getattr(scheduler, "interval", None)
    if declared in ("step", "epoch"):
        return str(declared)
    if isinstance(scheduler, OneCycleLR):
        return "step"
    return "epoch"  # torch's own schedulers count epochs in their docs (StepLR step_size, ...)


def lr_scheduler_config(
    scheduler: Callable[..., Any] | LRScheduler | ReduceLROnPlateau | None,
    optimizer: Optimizer,
    trainer: Any = None,
) -> dict[str, Any] | None:
    """Lightning's lr_scheduler dict for ``scheduler`` (a ``optimizer -> LRScheduler`` partial, a built one, or None).

    A partial gets ``total_steps`` and ``steps_per_epoch`` from :func:`trainer_steps` when its target accepts them
    and they are not set. Interval: ``"step"`` for lit_tricks schedules and OneCycleLR, ``"epoch"`` for
    reduce-on-plateau (with its ``monitor``, default ``val/loss``) and for other torch schedulers.
    Reduce-on-plateau steps once per validation: its ``frequency`` is the Trainer's ``check_val_every_n_epoch``
    (Lightning steps it after epoch ``e`` when ``(e + 1) % frequency == 0``, the epochs that validate), so an
    epoch without validation neither fails (``strict``) nor re-counts the last validation's metric.
    """
    if scheduler is None:
        return None
    if isinstance(scheduler, LRScheduler | ReduceLROnPlateau):
        built: Any = scheduler
    elif callable(scheduler):
        accepted, bound = _unbound(scheduler)
        wanted = [
            k for k in ("total_steps", "steps_per_epoch") if (accepted is None or k in accepted) and k not in bound
        ]
        fill: dict[str, Any] = {}
        if wanted and trainer is not None:
            total, per_epoch = trainer_steps(trainer)
            values = {
                "total_steps": int(total) if total else None,
                "steps_per_epoch": int(per_epoch) if per_epoch else None,
            }
            fill = {k: values[k] for k in wanted if values[k] is not None}
        built = scheduler(optimizer, **fill)
        if not isinstance(built, LRScheduler | ReduceLROnPlateau):
            raise TypeError(f"scheduler: the partial must build a torch LRScheduler, got {type(built).__name__}")
    else:
        raise TypeError(
            f"scheduler: expected None, an LRScheduler or a callable optimizer -> LRScheduler (Hydra _partial_), "
            f"got {type(scheduler).__name__}"
        )
    config: dict[str, Any] = {"scheduler": built, "interval": _interval(built), "frequency": 1}
    if isinstance(built, ReduceLROnPlateau):
        config["interval"] = "epoch"
        config["monitor"] = getattr(built, "monitor", "val/loss")
        config["strict"] = True
        config["frequency"] = _validation_every_n_epochs(trainer)
    return config


def _validation_every_n_epochs(trainer: Any) -> int:
    """The Trainer's ``check_val_every_n_epoch`` when it is an int >= 1, else 1 (no Trainer, or validation by
    steps across epochs with ``check_val_every_n_epoch=None``)."""
    every = getattr(trainer, "check_val_every_n_epoch", None)
    return every if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else 1
