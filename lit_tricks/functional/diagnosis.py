"""Learning-curve diagnosis (bias / variance against a target error) and the math of per-layer statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate

__all__ = [
    "DIAGNOSES",
    "REMEDIES",
    "Diagnosis",
    "activation_stats",
    "dead_fraction",
    "diagnose",
    "ema_smooth",
    "first_samples",
    "update_ratio",
]

#: The notes' remedies per diagnosis (Ng, "Machine Learning Yearning" / CS229 "advice for applying ML").
REMEDIES: dict[str, list[str]] = {
    "high_bias": [
        "bigger model (more layers / units)",
        "train longer, or a better optimizer / learning-rate schedule",
        "less regularization (weight decay, dropout, label smoothing)",
        "better features or architecture",
    ],
    "high_variance": [
        "more training data",
        "data augmentation",
        "more regularization (weight decay, dropout)",
        "early stopping on the validation metric",
        "smaller model",
    ],
    "fine": ["nothing urgent: validation error is close to training error and the target"],
}
REMEDIES["high_bias_and_variance"] = REMEDIES["high_bias"][:2] + REMEDIES["high_variance"][:3]
DIAGNOSES = tuple(REMEDIES)


@dataclass(frozen=True)
class Diagnosis:
    """A learning-curve diagnosis: ``kind`` is one of :data:`DIAGNOSES`.

    ``avoidable_bias = train_error - target_error``, ``variance = val_error - train_error``.
    """

    kind: str
    train_error: float
    val_error: float
    target_error: float
    avoidable_bias: float
    variance: float
    remedies: tuple[str, ...]

    def message(self) -> str:
        """A short human report: the numbers, the verdict and the remedies."""
        head = {
            "high_bias": "high bias (underfitting): training error is far above the target",
            "high_variance": "high variance (overfitting): validation error is far above training error",
            "high_bias_and_variance": "high bias AND high variance",
            "fine": "no large bias or variance",
        }[self.kind]
        return (f"{head}. train error {self.train_error:.4f}, val error {self.val_error:.4f}, target "
                f"{self.target_error:.4f} (avoidable bias {self.avoidable_bias:+.4f}, variance {self.variance:+.4f})."
                f"\nremedies: " + "; ".join(self.remedies))


def ema_smooth(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """Debiased exponential moving average, as TensorBoard's smoothing slider: ``s_t = w s_{t-1} + (1-w) x_t``.

    Divided by ``1 - w^t`` so the first points are not pulled toward 0; nan values are skipped (kept as nan).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    out: list[float] = []
    acc, n = 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(math.nan)
            continue
        n += 1
        acc = weight * acc + (1.0 - weight) * v
        out.append(acc / (1.0 - weight**n))
    return out


def diagnose(
    train_error: float,
    val_error: float,
    target_error: float | None = None,
    *,
    bias_tolerance: float = 0.02,
    variance_tolerance: float = 0.02,
) -> Diagnosis:
    """Classify final training / validation errors (lower is better) as high bias, high variance, both, or fine.

    ``target_error``: the human-level / Bayes error to compare with (default 0). Tolerances are in error units
    (0.02 = two percentage points for a classification error): high bias when ``train - target > bias_tolerance``,
    high variance when ``val - train > variance_tolerance``. For losses instead of errors pass loss values and
    tolerances in loss units.
    """
    for name, value in (("train_error", train_error), ("val_error", val_error)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if bias_tolerance < 0 or variance_tolerance < 0:
        raise ValueError(f"tolerances must be >= 0, got bias {bias_tolerance}, variance {variance_tolerance}")
    target = 0.0 if target_error is None else float(target_error)
    bias = train_error - target
    variance = val_error - train_error
    high_bias, high_var = bias > bias_tolerance, variance > variance_tolerance
    kind = ("high_bias_and_variance" if high_bias and high_var else "high_bias" if high_bias
            else "high_variance" if high_var else "fine")
    return Diagnosis(kind, float(train_error), float(val_error), target, bias, variance, tuple(REMEDIES[kind]))


@torch.no_grad()
def dead_fraction(activation: torch.Tensor, channel_dim: int = 1) -> float:
    """Fraction of units (features / channels along ``channel_dim``) that are exactly 0 for every sample and position.

    A ReLU unit that outputs 0 on a whole batch gets no gradient: it is "dead" (CS231n, "dying ReLU").
    """
    if activation.dim() < 2:
        return float((activation == 0).all())
    alive = (activation != 0).transpose(0, channel_dim).reshape(activation.shape[channel_dim], -1).any(dim=1)
    return int((~alive).sum()) / alive.numel()


@torch.no_grad()
def activation_stats(activation: torch.Tensor, channel_dim: int = 1) -> dict[str, float]:
    """``mean``, ``std`` and ``dead_fraction`` of one layer's output on a batch (float32 math)."""
    a = activation.detach().float()
    return {"mean": float(a.mean()), "std": float(a.std()) if a.numel() > 1 else 0.0,
            "dead_fraction": dead_fraction(a, channel_dim)}


@torch.no_grad()
def update_ratio(before: torch.Tensor, after: torch.Tensor, eps: float = 1e-12) -> float:
    """``||w_after - w_before|| / ||w_before||``: the notes' update-to-weight ratio (rule of thumb ~1e-3)."""
    return float((after.float() - before.float()).norm() / (before.float().norm() + eps))


def first_samples(loader: Any, n: int) -> tuple[Any, ...]:
    """The first ``n`` samples behind a DataLoader as one collated ``(x, y, ...)`` batch.

    Read from ``loader.dataset`` by index when it is a map-style dataset (the loader's sampler, which may be stateful
    and resumable, is not advanced); an iterable dataset is read batch by batch from a fresh iterator.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, Sized) and not isinstance(dataset, IterableDataset):
        collate = getattr(loader, "collate_fn", None) or default_collate
        batch = collate([dataset[i] for i in range(min(n, len(dataset)))])  # type: ignore[index]
    else:
        parts: list[list[Any]] = []
        count = 0
        for item in loader:
            if not parts:
                parts = [[] for _ in item]
            for store, value in zip(parts, item):
                store.append(value)
            count += len(item[0])
            if count >= n:
                break
        batch = [torch.cat(p) if isinstance(p[0], torch.Tensor) else p[0] for p in parts]
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise TypeError(f"expected (x, y, ...) batches, got {type(batch).__name__}")
    return tuple(b[:n] if isinstance(b, torch.Tensor) else b for b in batch)
