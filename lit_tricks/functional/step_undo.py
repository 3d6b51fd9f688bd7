"""Undoing an optimizer step without a Trainer: copies of what ``optimizer.step`` changes, restored right after it.

Used by ``NaNGuard`` to drop a bad step so that nothing that ran inside it (decoupled weight decay in a hook, an
optimizer that decays parameters without a gradient) leaves a trace, and to roll back to an in-memory snapshot.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "StepUndo", "copy_buffers", "copy_step_state", "restore_buffers_", "restore_snapshot", "restore_step_state",
    "take_snapshot",
]


def copy_step_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of what ``optimizer.step`` may change: its parameters and their per-parameter state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        values = [p.detach().clone() for p in params]
    state = {i: copy.deepcopy(optimizer.state[p]) for i, p in enumerate(params) if p in optimizer.state}
    return {"params": params, "values": values, "state": state}


def restore_step_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Put :func:`copy_step_state`'s copies back (parameters in place; per-parameter state replaced)."""
    with torch.no_grad():
        for p, v in zip(saved["params"], saved["values"]):
            p.copy_(v)
    for i, p in enumerate(saved["params"]):
        if i in saved["state"]:
            optimizer.state[p] = saved["state"][i]
        else:
            optimizer.state.pop(p, None)


class StepUndo:
    """Restores an optimizer right after its next ``step`` (a one-shot ``register_step_post_hook``), once per step.

    :meth:`flush` restores now what a step that never ran left pending (a GradScaler skips ``optimizer.step`` after
    an inf), so no stale hook undoes a later good step.
    """

    def __init__(self) -> None:
        self.pending: dict[int, Callable[[], None]] = {}  # optimizer id -> its pending restore

    def after_step(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any] | None,
                   then: Callable[[], None] | None = None) -> None:
        """Right after ``optimizer.step`` returns, put ``saved`` back (and call ``then``); once per step."""
        if id(optimizer) in self.pending:
            return  # L-BFGS evaluates its closure several times per step: keep the state from before the first
        handles: list[Any] = []

        def restore() -> None:
            self.pending.pop(id(optimizer), None)
            for handle in handles:
                handle.remove()
            if saved is not None:
                restore_step_state(optimizer, saved)
            if then is not None:
                then()

        register = getattr(optimizer, "register_step_post_hook", None)
        if not callable(register):  # not a torch Optimizer: restore now (what runs in the step may still act)
            restore()
            return
        handles.append(register(lambda opt, args, kwargs: restore()))
        self.pending[id(optimizer)] = restore

    def flush(self) -> None:
        """Restore now whatever is still pending."""
        for restore in list(self.pending.values()):
            restore()


def take_snapshot(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer], step: int) -> dict[str, Any]:
    """An in-memory copy of ``module``'s state_dict and the optimizers' states, tagged with ``step``."""
    with torch.no_grad():
        return {
            "step": step,
            "model": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "optimizers": [copy.deepcopy(opt.state_dict()) for opt in optimizers],
        }


def restore_snapshot(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer], snapshot: dict[str, Any]) -> None:
    """Load :func:`take_snapshot`'s copy back (the optimizers get copies: they must not alias the snapshot)."""
    with torch.no_grad():
        module.load_state_dict(snapshot["model"])
    for opt, state in zip(optimizers, snapshot["optimizers"]):
        opt.load_state_dict(copy.deepcopy(state))


def _stat_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for b in module.buffers() if b.is_floating_point() or b.dtype == torch.long]


def copy_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Copies of ``module``'s floating and int64 buffers (BatchNorm statistics and counters), in order."""
    return [b.detach().clone() for b in _stat_buffers(module)]


def restore_buffers_(module: nn.Module, saved: list[torch.Tensor] | None) -> None:
    """Put :func:`copy_buffers`'s copies back (nothing when ``saved`` is None)."""
    if saved is None:
        return
    with torch.no_grad():
        for dst, src in zip(_stat_buffers(module), saved):
            dst.copy_(src)
