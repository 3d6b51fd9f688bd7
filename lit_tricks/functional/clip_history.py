"""ClipHistory: the pre-clip gradient norms and clip counts of each optimizer, without a Trainer (torch only).

The state of :class:`lit_tricks.callbacks.GradientClipping`: a ring buffer of the last ``history`` pre-clip global
norms (AutoClip's percentile reads it) with the count of norms pushed into it, the optimizer steps seen, and how many
of them were clipped, one set per optimizer index. Loaded with another ``history``, the ring keeps the newest norms
(oldest first) and never invents one. Counters of the clipped steps stay tensors on the gradients' device: recording
causes no host sync.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_tricks.functional.clip import push_history_

__all__ = ["ClipHistory"]


class ClipHistory:
    """Pre-clip norms (a ring of ``history`` slots), steps and clipped steps, per optimizer.

    ``norm_history``, ``steps`` and ``clipped_steps`` are those of the optimizer chosen by :meth:`select` (0 at
    first); the other optimizers' are stashed until selected again.
    """

    def __init__(self, history: int = 1000) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        self.history = history
        self.norm_history = torch.zeros(history, dtype=torch.float32)
        self.pushed = 0  # norms pushed into this ring (the steps, unless a resize kept fewer): slot pushed % history
        self.steps = 0  # optimizer steps seen (Python int: known on the host without a sync)
        self.clipped_steps = torch.zeros((), dtype=torch.float32)  # stays on the device of the grads
        self.current = 0
        self._stashed: dict[int, tuple[Tensor, int, int, Tensor]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled with tensors of its own: a copy torch.multiprocessing unpickles (a ``ddp_spawn`` rank's callback)
        would otherwise map the sender's shared memory, and every rank's in-place updates would land in one ring and
        one counter (2 ranks, 3 steps: a clipped fraction of 2)."""
        self.__dict__.update(state)
        self.norm_history, self.clipped_steps = self.norm_history.clone(), self.clipped_steps.clone()
        self._stashed = {i: (ring.clone(), pushed, steps, clipped.clone())
                         for i, (ring, pushed, steps, clipped) in self._stashed.items()}

    def select(self, optimizer_idx: int) -> None:
        """Make ``norm_history``, ``steps`` and ``clipped_steps`` those of optimizer ``optimizer_idx``."""
        if optimizer_idx == self.current:
            return
        self._stashed[self.current] = (self.norm_history, self.pushed, self.steps, self.clipped_steps)
        fresh = (torch.zeros(self.history, dtype=torch.float32), 0, 0, torch.zeros((), dtype=torch.float32))
        self.norm_history, self.pushed, self.steps, self.clipped_steps = self._stashed.pop(optimizer_idx, fresh)
        self.current = optimizer_idx

    def to(self, device: torch.device) -> None:
        """Keep the current optimizer's history and counter on ``device`` (the gradients')."""
        if self.norm_history.device != device:
            self.norm_history = self.norm_history.to(device)
        if self.clipped_steps.device != device:
            self.clipped_steps = self.clipped_steps.to(device)

    def push(self, norm: Tensor) -> None:
        """Write this step's pre-clip norm into the ring (before :meth:`count`; AutoClip reads the ring's first
        ``min(pushed, history)`` slots in between)."""
        push_history_(self.norm_history, self.pushed, norm)
        self.pushed += 1

    def count(self, clipped: Tensor) -> None:
        """Close this step: count it, and count it as clipped when ``clipped`` (a 0-d bool tensor) is true."""
        self.clipped_steps.add_(clipped)  # a bool tensor: +1 or +0, in the counter's dtype
        self.steps += 1

    @property
    def clipped_fraction(self) -> Tensor:
        """Fraction of the optimizer steps so far whose gradients were changed by clipping (0-d tensor)."""
        return self.clipped_steps / max(self.steps, 1)

    def filled(self) -> Tensor:
        """The pre-clip norms of the last ``min(pushed, history)`` steps, oldest first."""
        n = min(self.pushed, self.history)
        if self.pushed <= self.history:
            return self.norm_history[:n].clone()
        start = self.pushed % self.history
        return torch.cat([self.norm_history[start:], self.norm_history[:start]])

    def state_dict(self) -> dict[str, Any]:
        """Optimizer 0's entries at the top level (version 1's layout) and every optimizer's in ``per_optimizer``."""
        current = self.current
        per = {}
        for idx in sorted({current, *self._stashed}):
            self.select(idx)
            per[idx] = {"norm_history": self.norm_history.detach().cpu().clone(), "pushed": self.pushed,
                        "steps": self.steps,
                        "clipped_steps": self.clipped_steps.detach().cpu().clone()}
        self.select(current)
        first = per.get(0, {"norm_history": torch.zeros(self.history), "steps": 0, "clipped_steps": torch.zeros(())})
        return {**first, "per_optimizer": per}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stashed, self.current = {}, 0
        per = state_dict.get("per_optimizer") or {0: state_dict}  # version 1: optimizer 0's entries only
        for idx in sorted(int(i) for i in per if int(i) != 0):
            self._load_one(per[idx])
            self._stashed[idx] = (self.norm_history, self.pushed, self.steps, self.clipped_steps)
        self._load_one(per.get(0, {}))

    def _load_one(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        self.clipped_steps = torch.as_tensor(state_dict.get("clipped_steps", 0.0), dtype=torch.float32).clone()
        saved = state_dict.get("norm_history")
        self.norm_history = torch.zeros(self.history, dtype=torch.float32)
        self.pushed = 0
        if saved is None:
            return
        ring = torch.as_tensor(saved, dtype=torch.float32)
        self.pushed = int(state_dict.get("pushed", self.steps))  # version <= 2: one norm per step
        if ring.numel() == self.history:
            self.norm_history = ring.clone()
            return
        # ``history`` changed: the newest norms the saved ring holds, oldest first, in slots 0.. of the new ring
        held = min(self.pushed, ring.numel())
        start = self.pushed % ring.numel() if self.pushed > ring.numel() else 0
        newest = torch.cat([ring[start:], ring[:start]])[:held][-self.history:]
        self.norm_history[: newest.numel()] = newest
        self.pushed = newest.numel()
