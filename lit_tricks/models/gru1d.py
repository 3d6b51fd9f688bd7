"""The MNIST-1D paper's recurrent baseline (Greydanus & Kobak, 2020, ``GRUBase``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GRU1d"]


class GRU1d(nn.Module):
    """A (bidirectional) GRU over the ``L`` samples of a 1-D signal, every step's output flattened into a ``Linear``.

    Defaults are the mnist1d repository's ``GRUBase``: one scalar per time step, hidden size 6, bidirectional, the
    ``L * 2 * 6`` outputs of all 40 steps into ``Linear(480, 10)``: 5,134 parameters (the paper reports 91% test
    accuracy). Any input ``(N, *, L)`` is read as ``L`` steps of ``in_channels`` features (``(N, 1, 1, 40)`` included).

    Args:
        image_size: the input length ``L`` (an int, or a shape whose product is ``L``); sizes the head.
        hidden_size: GRU state size per direction.
        bidirectional: run a second GRU from the end of the signal.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 40,
        *,
        hidden_size: int = 6,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be an int >= 1, got {hidden_size!r}")
        length = image_size if isinstance(image_size, int) else math.prod(image_size)
        self.in_channels = in_channels
        self.gru = nn.GRU(in_channels, hidden_size, batch_first=True, bidirectional=bidirectional)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(length * hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, x.shape[-1]).transpose(1, 2)  # (N, L, C)
        out, _ = self.gru(x)  # zero initial state, as GRUBase
        return self.head(self.flatten(out))  # type: ignore[no-any-return]
