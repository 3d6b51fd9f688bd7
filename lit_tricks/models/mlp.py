"""A multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Flatten, then ``Linear -> [BatchNorm] -> activation`` per hidden width, then ``Dropout -> Linear`` head.

    Args:
        in_features: input size; default ``in_channels * prod(image_size)``.
        hidden: widths of the hidden layers (empty = logistic/softmax regression).
        batch_norm: BatchNorm1d after each hidden Linear.
        dropout: p of the Dropout before the head (kept as a layer even at 0 so TrickModule can set it).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 8,
        *,
        in_features: int | None = None,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        width = in_features if in_features is not None else in_channels * math.prod(size)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_ACTIVATIONS[activation]())
            width = h
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
