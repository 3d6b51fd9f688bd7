"""Test-time augmentation: average the class probabilities over flipped copies of the input."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["tta_flip"]


@torch.no_grad()
def tta_flip(model: Callable[[Tensor], Tensor], x: Tensor, vertical: bool = False,
             probabilities: bool = True) -> Tensor:
    """``mean_k softmax(model(flip_k(x)))`` over identity and horizontal flip (and vertical flips if ``vertical``).

    ``x``: ``(N, C, H, W)``; ``model`` returns logits ``(N, K)``. Returns probabilities ``(N, K)``; with
    ``probabilities=False`` the mean of the raw outputs (regression).
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    flips: list[tuple[int, ...]] = [(), (-1,)]
    if vertical:
        flips += [(-2,), (-2, -1)]
    outs = [model(torch.flip(x, dims) if dims else x) for dims in flips]
    return torch.stack([o.softmax(-1) for o in outs] if probabilities else outs).mean(0)
