"""Faults a Hydra job of the cluster tests injects into itself (added with ``+callbacks.<name>._target_=...``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback


class NaNGradAt(Callback):
    """Every gradient of optimizer step ``step`` becomes NaN (as a diverged step's would); -1 = never."""

    def __init__(self, step: int = -1) -> None:
        self.step = int(step)

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == self.step:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
