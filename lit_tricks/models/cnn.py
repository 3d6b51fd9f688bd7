"""A small CNN for 8x8 (digits), 28x28 (MNIST) and 32x32 (CIFAR) images, fast on CPU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lit_tricks.validation import check_number

__all__ = ["SmallCNN"]


def _conv_bn_relu(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(nn.Module):
    """VGG-style stages of ``convs_per_stage x (conv3x3 -> BN -> ReLU)`` with 2x2 max-pooling between stages,
    global average pooling, ``Dropout -> Linear`` head.

    Args:
        width: channels of the first stage; each stage doubles them.
        stages: number of stages; default from the image size (2 for <= 16 px, 3 above), so 8x8 -> 2x2 and
            28/32 -> 7/8 -> 3/4 before pooling.
        dropout: p of the Dropout before the head (kept as a layer even at 0 so TrickModule can set it).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 8,
        *,
        width: int = 32,
        stages: int | None = None,
        convs_per_stage: int = 2,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_number("width", width, 1, integer=True, owner="SmallCNN")
        check_number("convs_per_stage", convs_per_stage, 1, integer=True, owner="SmallCNN")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if stages is None:
            stages = 2 if min(size) <= 16 else 3
        if stages < 1 or min(size) < 2 ** (stages - 1):
            raise ValueError(f"stages must be in [1, {int(math.log2(min(size))) + 1}] for image_size {size}, "
                             f"got {stages!r}")
        layers: list[nn.Module] = []
        cin = in_channels
        for s in range(stages):
            cout = width * 2**s
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(cin, cout, batch_norm)
                cin = cout
            if s < stages - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.features(x))))
