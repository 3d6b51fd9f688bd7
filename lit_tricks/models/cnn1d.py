"""The MNIST-1D paper's 1-D CNN (Greydanus & Kobak, 2020, ``ConvBase``), built from modules so surgery can reach it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvNet1d"]


class ConvNet1d(nn.Module):
    """``(Conv1d -> ReLU)`` per entry of ``kernels``, flatten, ``Linear`` head: the paper's ConvBase by default.

    Defaults: three Conv1d of 25 channels with kernels 5/3/3, stride 2, padding 1 (40 -> 19 -> 10 -> 5 samples),
    then ``Linear(25 * 5, 10)``: 5,210 parameters, as in the mnist1d repository's ``models.py``. Any input
    ``(N, *, L)`` is read as ``(N, in_channels, L)`` (the DataModule's ``(N, 1, 1, 40)`` included). No norm or
    dropout layers: ``module.norm`` and ``module.dropout_placement=every_hidden`` insert them.

    Args:
        image_size: the input length ``L`` (an int, or a shape whose product is ``L``); sizes the head.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 40,
        *,
        channels: int = 25,
        kernels: Sequence[int] = (5, 3, 3),
        stride: int = 2,
        padding: int = 1,
    ) -> None:
        super().__init__()
        length = image_size if isinstance(image_size, int) else math.prod(image_size)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        if not kernels:
            raise ValueError("kernels must list at least one kernel size, got []")
        layers: list[nn.Module] = []
        cin = in_channels
        for k in kernels:
            layers += [nn.Conv1d(cin, channels, int(k), stride=stride, padding=padding), nn.ReLU()]
            cin = channels
            length = (length + 2 * padding - int(k)) // stride + 1
            if length < 1:
                raise ValueError(f"kernels {list(kernels)} with stride {stride} leave no samples of an input of "
                                 f"length {image_size}")
        self.in_channels = in_channels
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, x.shape[-1])
        return self.head(self.flatten(self.features(x)))  # type: ignore[no-any-return]
