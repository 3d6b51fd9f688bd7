"""The loss of a LightningModule's own ``training_step``, evaluated outside a Trainer (for diagnostics on copies).

Used by :class:`~lit_tricks.callbacks.gradient_check.GradientCheck` and
:class:`~lit_tricks.callbacks.sanity_checks.SanityChecks`; it knows Lightning's "not attached to a `Trainer`" error,
so it lives here rather than in the torch-only :mod:`lit_tricks.functional`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["training_step_loss", "training_step_loss_fn"]


def training_step_loss(module: nn.Module, batch: Any, batch_idx: int = 0) -> tuple[torch.Tensor, bool]:
    """The loss of ``module.training_step(batch, batch_idx)`` on a module outside any Trainer; ``(loss, fell_back)``.

    A detached copy has no trainer: when its ``training_step`` needs one, the loss falls back to cross-entropy of
    ``module(x)`` against ``y`` for an ``(x, y, ...)`` batch (``fell_back`` is then True).
    """
    step = getattr(module, "training_step", None)
    if step is None:
        raise TypeError(f"loss_fn: {type(module).__name__} has no training_step; pass loss_fn(module, batch)")
    try:
        out = step(batch, batch_idx)
    except RuntimeError as err:
        if "not attached to a `Trainer`" not in str(err) or not isinstance(batch, tuple | list) or len(batch) < 2:
            raise
        return nn.functional.cross_entropy(module(batch[0]), batch[1]), True
    if isinstance(out, Mapping):
        out = out.get("loss")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"loss_fn: training_step must return a loss tensor or {{'loss': tensor}}, got {type(out)}")
    return out, False


def training_step_loss_fn(module: nn.Module, batch: Any) -> torch.Tensor:
    """The training step's loss as ``loss_fn(module, batch)`` for ``functional.gradcheck.gradient_check``."""
    return training_step_loss(module, batch)[0]
