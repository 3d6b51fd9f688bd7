"""GradientCheck: a numerical gradient check on the first training batch, failing fast before any step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_tricks.diagnostics.training_step import training_step_loss_fn
from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.functional.gradcheck import SUSPICIOUS, WRONG, GradCheckReport, LossFn, gradient_check
from lit_tricks.validation import check_choice, check_number

__all__ = ["GradientCheck", "GradientCheckError"]

_ON_FAILURE = ("raise", "warn")


class GradientCheckError(RuntimeError):
    """Raised by :class:`GradientCheck` when the analytic gradient disagrees with the numeric one."""


class GradientCheck(pl.Callback):
    """Run :func:`~lit_tricks.functional.gradcheck.gradient_check` once, on the first training batch, before step 0.

    ``max_error``: the largest accepted relative error; default 1e-4 for smooth models and 1e-2 when the model has
    kinks (ReLU, max pooling), the notes' thresholds. ``on_failure``: ``"raise"`` (stop the fit with
    :class:`GradientCheckError` naming the worst tensor) or ``"warn"``. ``loss_fn(module, batch)``: default the
    module's ``training_step``. ``max_samples``: the check uses the batch's first samples only (fewer kinks to cross,
    and faster). The check runs on a float64 copy, so training itself is untouched.
    """

    def __init__(
        self,
        max_error: float | None = None,
        entries_per_tensor: int = 10,
        eps: float | None = None,
        seed: int = 0,
        max_samples: int | None = 8,
        on_failure: str = "raise",
        loss_fn: LossFn | None = None,
    ) -> None:
        check_choice("on_failure", on_failure, _ON_FAILURE, owner="GradientCheck")
        if max_error is not None:
            check_number("max_error", max_error, 0.0, lo_open=True, owner="GradientCheck")
        self.max_error = max_error
        self.entries_per_tensor = entries_per_tensor
        self.eps = eps
        self.seed = seed
        self.max_samples = max_samples
        self.on_failure = on_failure
        self.loss_fn = loss_fn
        self.done = False
        self.report: GradCheckReport | None = None

    @property
    def state_key(self) -> str:
        return cached_state_key(self, max_error=self.max_error, eps=self.eps, seed=self.seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.done:
            return
        self.done = True
        report = gradient_check(pl_module, batch, self.loss_fn or training_step_loss_fn,
                                entries_per_tensor=self.entries_per_tensor, eps=self.eps, seed=self.seed,
                                max_samples=self.max_samples)
        self.report = report
        limit = self.max_error if self.max_error is not None else (WRONG if report.has_kinks else SUSPICIOUS)
        if report.max_error <= limit:
            rank_zero_info(report.summary())
            return
        worst = report.worst
        message = (f"GradientCheck failed: relative error {report.max_error:.3e} > max_error {limit:g} in tensor "
                   f"{worst.name if worst else '?'!r}\n{report.summary()}")
        if self.on_failure == "raise":
            raise GradientCheckError(message)
        rank_zero_warn(message)

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
