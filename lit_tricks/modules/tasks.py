"""The tasks TrickModule trains, chosen by its ``loss``: one place for what each loss means.

``cross_entropy``: classification (integer labels or soft (N, K) targets, label smoothing). ``mse``: regression on
float targets when the model has one output, else classification against one-hot targets. ``binned``: regression
as classification over bins (one logit per bin; a point prediction from the bin distribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_tricks.functional.losses import binned_loss, soft_target_cross_entropy

__all__ = ["BINNED_POINTS", "LOSSES", "bin_edges", "is_regression_output", "task_loss", "task_residual"]

LOSSES = ("cross_entropy", "mse", "binned")
#: Point predictions from a bin distribution: mean (best for squared error), median (absolute error), mode.
BINNED_POINTS = ("mean", "median", "mode")


def bin_edges(loss: str, bins: Sequence[float] | None) -> Tensor | None:
    """The validated bin edges for ``loss="binned"`` (at least 3, strictly increasing); None for other losses."""
    if loss != "binned":
        return None
    if bins is None:
        raise ValueError("bins: loss='binned' needs bin edges, e.g. bins=[0, 0.5, 1.0, 1.5]")
    edges = torch.as_tensor([float(b) for b in bins], dtype=torch.float32)
    if edges.numel() < 3 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(f"bins must be at least 3 strictly increasing edges, got {list(bins)!r}")
    return edges


def is_regression_output(loss: str, out: Tensor) -> bool:
    """Whether ``out`` is a regression output: ``mse`` with one output per sample."""
    return loss == "mse" and (out.ndim == 1 or out.shape[-1] == 1)


def task_loss(loss: str, out: Tensor, y: Tensor, label_smoothing: float, edges: Tensor | None) -> Tensor:
    """Data loss of outputs ``out`` against targets ``y`` (indices, soft (N, K) targets, or real values)."""
    if loss == "cross_entropy":
        return soft_target_cross_entropy(out, y, label_smoothing)
    if loss == "binned":
        if edges is None:
            raise ValueError("loss='binned' needs bin edges")
        return binned_loss(out, y, edges, label_smoothing)
    if is_regression_output(loss, out):
        return F.mse_loss(out.reshape(y.shape), y.to(out.dtype))
    target = y.to(out.dtype) if y.is_floating_point() else F.one_hot(y, out.shape[-1]).to(out.dtype)
    return F.mse_loss(out, target)


def task_residual(loss: str, out: Tensor, y: Tensor) -> Tensor:
    """Residuals ``r`` with ``mean(r^2)`` equal to the ``mse`` task loss (for Gauss-Newton / Levenberg-Marquardt):
    ``out - y`` for a regression output, ``out - one_hot(y)`` for classification."""
    if loss != "mse":
        raise ValueError(f"loss={loss!r}: residuals exist for loss='mse' only (a sum of squares)")
    if is_regression_output(loss, out):
        return (out.reshape(y.shape) - y.to(out.dtype)).reshape(-1)
    target = y.to(out.dtype) if y.is_floating_point() else F.one_hot(y, out.shape[-1]).to(out.dtype)
    return (out - target).reshape(-1)
