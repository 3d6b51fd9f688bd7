"""The MNIST-1D paper's CNN: shapes and parameter count of ConvBase (25 channels, kernels 5/3/3, stride 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_tricks.models import MLP, ConvNet1d


def test_paper_cnn_shapes_and_parameters() -> None:
    model = ConvNet1d(num_classes=10, in_channels=1, image_size=(1, 40))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3] and all(c.out_channels == 25 for c in convs)
    assert model.head.in_features == 125  # 40 -> 19 -> 10 -> 5 samples x 25 channels
    # ConvBase: 150 + 1900 + 1900 conv parameters + 1260 in the head
    assert sum(p.numel() for p in model.parameters()) == 5210
    x = torch.randn(7, 1, 1, 40)
    assert model(x).shape == (7, 10)
    assert torch.equal(model(x), model(x.reshape(7, 40)))  # (N, L) and (N, 1, 1, L) are the same input


def test_paper_mlp_size() -> None:
    mlp = MLP(num_classes=10, in_channels=1, image_size=(1, 40), hidden=[100, 100])
    assert sum(p.numel() for p in mlp.parameters()) == 15210  # MLPBase: 40-100-100-10


def test_kernels_that_leave_nothing_fail() -> None:
    with pytest.raises(ValueError, match="leave no samples"):
        ConvNet1d(image_size=4, kernels=(5, 5, 5))
