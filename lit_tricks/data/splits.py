"""Seeded, stratified index splits: hold-out, k folds, subsample, bootstrap (torch only, no scikit-learn).

All functions take the candidate ``indices`` and the ``targets`` of the whole pool (indexed by those indices) and
return sorted index tensors, so a split depends only on (targets, seed), never on the global RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bootstrap_indices", "mix_seed", "stratified_holdout", "stratified_kfold"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 finalizer over each), e.g. ``mix_seed(seed, epoch, index)``."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
    return state >> 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _by_class(indices: Tensor, targets: Tensor, seed: int) -> list[Tensor]:
    """The indices of each class (classes in ascending order), each shuffled by ``seed``."""
    labels = targets[indices]
    g = _generator(seed)
    groups = []
    for cls in torch.unique(labels).tolist():
        members = indices[labels == cls]
        groups.append(members[torch.randperm(members.numel(), generator=g)])
    return groups


def stratified_holdout(indices: Tensor, targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``indices`` into (kept, held-out) with ``round(fraction * n)`` held out, class proportions preserved.

    Per-class counts follow the largest-remainder rule, so the total is exact and each class gets its share +-1.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction: expected a float in [0, 1), got {fraction!r}")
    groups = _by_class(indices, targets, seed)
    total = round(fraction * indices.numel())
    quotas = torch.tensor([fraction * g.numel() for g in groups], dtype=torch.float64)
    counts = quotas.floor().long()
    remainder = total - int(counts.sum())
    if remainder > 0:
        order = sorted(range(len(groups)), key=lambda i: (-(float(quotas[i]) - int(counts[i])), i))
        for i in order[:remainder]:
            counts[i] += 1
    held = [g[: int(c)] for g, c in zip(groups, counts)]
    kept = [g[int(c):] for g, c in zip(groups, counts)]
    empty = indices[:0]
    return (torch.cat(kept).sort().values if kept else empty, torch.cat(held).sort().values if held else empty)


def stratified_kfold(indices: Tensor, targets: Tensor, num_folds: int, seed: int) -> list[Tensor]:
    """``num_folds`` disjoint folds covering ``indices``; sizes differ by at most one, per class too."""
    if num_folds < 2:
        raise ValueError(f"num_folds: expected an int >= 2, got {num_folds!r}")
    ordered = torch.cat(_by_class(indices, targets, seed))
    fold_of = torch.arange(ordered.numel()) % num_folds
    return [ordered[fold_of == k].sort().values for k in range(num_folds)]


def bootstrap_indices(indices: Tensor, seed: int) -> Tensor:
    """A bootstrap sample: ``len(indices)`` draws with replacement (bagging), seeded."""
    picks = torch.randint(0, indices.numel(), (indices.numel(),), generator=_generator(seed))
    return indices[picks]
