"""Detecting a failed step without a Trainer: non-finite values (one fused reduction) and a loss that explodes.

:class:`DivergenceDetector` is the state and rule of ``NaNGuard(divergence_factor=...)``; NaNGuard decides *when*
(each optimizer step, after the ranks agreed on the step loss) and what to undo.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from lit_tricks.functional.sharded import local, locals_of

__all__ = ["DivergenceDetector", "finite_flag", "non_finite_entries"]

log = logging.getLogger(__name__)


def finite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: every element of every tensor is finite (one fused reduction, no host sync). Of DTensor
    shards, this rank's local part only: the ranks combine their flags (NaNGuard reduces its decision)."""
    if not tensors:
        return torch.tensor(True)
    # max |x| per tensor: NaN if any element is NaN, inf if any is inf; exact (no overflow, unlike the 2-norm) and no
    # tensor-sized temporaries
    parts = [t for t in locals_of(t.detach() for t in tensors) if t.numel()]  # a shard may be empty
    if not parts:
        return torch.tensor(True)
    peaks = torch._foreach_norm(parts, ord=float("inf"))
    # stack promotes to the widest dtype: a float64 peak above float32's max (1e300) stays finite
    return torch.isfinite(torch.stack([p.to(peaks[0].device) for p in peaks])).all()


def non_finite_entries(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the floating tensors in a checkpoint's weights and optimizer states that hold NaN/inf (of DTensor
    shards, in this rank's part)."""
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
    if bool(finite_flag([v for _, v in named])):
        return []
    return [name for name, v in named if not bool(torch.isfinite(local(v)).all())]


class DivergenceDetector:
    """A finite step loss that has exploded: above ``factor * reference`` at each of the last ``window`` steps.

    The reference is the mean of the first ``ref_steps`` finite step losses. ``factor=None`` turns the check off
    (:meth:`observe` is always False). Non-finite losses are left to the NaN check: they change nothing here.
    """

    def __init__(self, factor: float | None = None, ref_steps: int = 5, window: int = 3) -> None:
        if factor is not None and not float(factor) > 1.0:
            raise ValueError(f"divergence_factor must be None (off) or a number > 1, got {factor!r}")
        if int(ref_steps) < 1 or int(window) < 1:
            raise ValueError(f"ref_steps and window must be integers >= 1, got {ref_steps!r} and {window!r}")
        self.factor = None if factor is None else float(factor)
        self.ref_steps = int(ref_steps)
        self.window = int(window)
        self.ref_sum = 0.0  # sum and count of the first ref_steps finite step losses
        self.ref_count = 0
        self.above = 0  # steps in a row whose loss was above factor * reference
        self._warned_ref = False

    @property
    def reference(self) -> float:
        """The reference loss: the mean of the first ``ref_steps`` finite step losses (NaN before any)."""
        return self.ref_sum / self.ref_count if self.ref_count else math.nan

    def observe(self, value: float) -> bool:
        """Count one step loss; True when it is the ``window``-th in a row above ``factor * reference``."""
        if self.factor is None or not math.isfinite(value):
            return False
        if self.ref_count < self.ref_steps:
            self.ref_sum += value
            self.ref_count += 1
            return False
        if self.reference <= 0:
            if not self._warned_ref:
                self._warned_ref = True
                log.warning("NaNGuard: reference loss %.4g <= 0; the divergence check (a multiple of it) is off",
                            self.reference)
            return False
        self.above = self.above + 1 if value > self.factor * self.reference else 0
        return self.above >= self.window

    def restart_count(self) -> None:
        """Forget the steps counted above the threshold (their weights were rolled back)."""
        self.above = 0

    def state_dict(self) -> dict[str, Any]:
        return {"ref_sum": self.ref_sum, "ref_count": self.ref_count, "above": self.above}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ref_sum = float(state_dict.get("ref_sum", 0.0))
        self.ref_count = int(state_dict.get("ref_count", 0))
        self.above = int(state_dict.get("above", 0))
