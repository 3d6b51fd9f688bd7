"""The interaction matrix's registry: every cell is a test decorated with :func:`cell`.

``@cell("EMAWeights", "accumulation")`` marks a test as the cell (callback x dimension) and records its status:
``"pass"`` (asserts against an independent oracle), ``"limitation"`` (the combination is unsupported by design; the
test asserts the documented one-line error or behaviour, ``note`` says which) or ``"xfail"`` (a known bug, strict
xfail with ``note`` as reason, so the cell flips when the fix lands). ``scripts/matrix_table.py`` renders the registry
into ``docs/tested_with.md``; ``test_table.py`` checks the committed table matches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

__all__ = ["CALLBACKS", "DIMENSIONS", "STATUSES", "cell"]

#: Columns of the table, in order.
CALLBACKS = (
    "EarlyStopping", "EMAWeights", "CheckpointEnsemble", "GradientClipping", "NaNGuard", "RNGState", "Preemption",
    "LearningCurves", "LayerStats", "SanityChecks", "Schedule", "ReduceOnPlateau",
)
#: Rows of the table: key -> label.
DIMENSIONS: dict[str, str] = {
    "properties": "pure function vs reference (hypothesis)",
    "tied": "tied / shared parameters and buffers",
    "accumulation": "gradient accumulation (the window is the step)",
    "manual": "manual optimization",
    "two_optimizers": "two optimizers",
    "bf16": "`bf16-mixed` on CPU",
    "low_precision": "`bf16-true` / `16-true` weights on CPU (fp32 recurrence)",
    "compiled": "`torch.compile` (aot_eager), all callbacks in one fit",
    "second_fit": "same instance, second `fit()`",
    "resume_changed": "resume with changed `max_epochs` / arguments",
    "iterable": "`IterableDataset`, `max_steps` / `max_time` bounds",
    "multi_val": "several validation loaders",
    "monitor": "monitored value NaN/inf or logged in training only",
    "stop_reasons": "every EarlyStopping stop reason vs Lightning's",
    "val_schedule": "`val_check_interval<1`, `check_val_every_n_epoch>1`, `limit_train_batches`",
    "lr_sources": "several lr / update sources composing (schedule, plateau, NaN-guard lr cut, weight decay)",
    "load_other_args": "`load_state_dict` into an instance with other arguments",
    "ddp": "2-process DDP (gloo), all callbacks in one fit",
    "sharded": "2-rank FSDP2 (`ModelParallelStrategy`, gloo), both checkpoint modes, 2→1 / 1→2 ranks",
    "pickle": "pickled / exported objects (`torch.save`)",
}
STATUSES = ("pass", "limitation", "xfail")

_F = TypeVar("_F", bound=Callable[..., Any])


def cell(callback: str, dimension: str, status: str = "pass", note: str = "") -> Callable[[_F], _F]:
    """Register the decorated test as the matrix cell ``(callback, dimension)`` with ``status``."""
    if callback not in CALLBACKS:
        raise ValueError(f"callback must be one of {CALLBACKS}, got {callback!r}")
    if dimension not in DIMENSIONS:
        raise ValueError(f"dimension must be one of {sorted(DIMENSIONS)}, got {dimension!r}")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if status != "pass" and not note:
        raise ValueError(f"a {status!r} cell needs a note (the documented limitation or the bug)")

    def decorate(fn: _F) -> _F:
        fn = pytest.mark.matrix(callback=callback, dimension=dimension, status=status, note=note)(fn)
        if status == "xfail":
            fn = pytest.mark.xfail(strict=True, reason=note)(fn)
        return fn

    return decorate
