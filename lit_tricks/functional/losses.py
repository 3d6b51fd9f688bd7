"""Losses: cross-entropy with soft targets (MixUp/CutMix) and label smoothing; regression as classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bin_centers",
    "binned_expected_value",
    "binned_loss",
    "binned_point",
    "soft_target_cross_entropy",
    "value_to_bin",
]


def soft_target_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of ``-sum_k q_k log softmax(logits)_k``.

    ``target`` is class indices (N,) or a distribution (N, K) (e.g. from MixUp/CutMix). Label smoothing mixes the
    target with the uniform distribution: ``q = (1 - eps) * q + eps / K`` (Szegedy et al., 2016), which for
    indices equals ``F.cross_entropy(..., label_smoothing=eps)``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if target.ndim == logits.ndim - 1 and not target.is_floating_point():
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if target.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    q = target.to(logits.dtype)
    if label_smoothing > 0.0:
        q = q * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
    return -(q * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _check_edges(edges: Tensor) -> None:
    if edges.ndim != 1 or edges.numel() < 3:
        raise ValueError(f"bins must be a 1-D sequence of at least 3 edges (2 bins), got shape {tuple(edges.shape)}")
    if not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError("bins must be strictly increasing")


def bin_centers(edges: Tensor) -> Tensor:
    """Midpoints of the K bins given by K+1 increasing ``edges``."""
    _check_edges(edges)
    return 0.5 * (edges[1:] + edges[:-1])


def value_to_bin(y: Tensor, edges: Tensor) -> Tensor:
    """Index of the bin holding each value of ``y``; values outside the edges go to the first/last bin."""
    _check_edges(edges)
    idx = torch.bucketize(y.reshape(-1).to(edges.dtype), edges[1:-1].contiguous(), right=True)
    return idx.clamp_(0, edges.numel() - 2)


def binned_expected_value(logits: Tensor, edges: Tensor) -> Tensor:
    """Predicted value ``sum_k softmax(logits)_k * center_k`` (N,); the distribution is ``softmax(logits)``."""
    centers = bin_centers(edges).to(logits.device, logits.dtype)
    return F.softmax(logits, dim=-1) @ centers


def binned_point(logits: Tensor, edges: Tensor, kind: str = "mean") -> Tensor:
    """A point prediction (N,) from the bin distribution ``softmax(logits)``.

    ``kind``: mean (expected value over bin centers; minimizes squared error) | median (where the CDF reaches 0.5,
    linear inside the bin; minimizes absolute error) | mode (center of the most likely bin).
    """
    if kind == "mean":
        return binned_expected_value(logits, edges)
    edges = edges.to(logits.device, logits.dtype)
    if kind == "mode":
        return bin_centers(edges)[logits.argmax(-1)]
    if kind != "median":
        raise ValueError(f"kind must be one of ['mean', 'median', 'mode'], got {kind!r}")
    probs = F.softmax(logits, dim=-1)
    cdf = probs.cumsum(-1)
    k = torch.searchsorted(cdf, torch.full_like(cdf[:, :1], 0.5)).clamp_(max=probs.shape[-1] - 1).squeeze(-1)
    rows = torch.arange(probs.shape[0], device=probs.device)
    below = cdf[rows, k] - probs[rows, k]
    frac = ((0.5 - below) / probs[rows, k].clamp_min(1e-12)).clamp(0.0, 1.0)
    return edges[k] + frac * (edges[k + 1] - edges[k])


def binned_loss(logits: Tensor, y: Tensor, edges: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the bin logits (N, K) against the bin of each real target ``y`` (N,).

    Regression as classification: the notes prefer a softmax over quantized outputs to an L2 loss, as it models
    multi-modal targets (the expected value is :func:`binned_expected_value`).
    """
    if logits.shape[-1] != edges.numel() - 1:
        raise ValueError(f"the model must output one logit per bin: {edges.numel() - 1} bins, "
                         f"got {logits.shape[-1]} outputs")
    return F.cross_entropy(logits, value_to_bin(y, edges.to(y.device)), label_smoothing=label_smoothing)
