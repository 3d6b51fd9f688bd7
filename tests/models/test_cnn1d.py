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


def test_paper_cnn_computes_what_the_plain_torch_convbase_computes() -> None:
    # oracle: benchmarks/mnist1d_reference.py's line-by-line ConvBase (no lit_tricks code), same weights
    from benchmarks.mnist1d_reference import ConvBase

    torch.manual_seed(0)
    ours, ref = ConvNet1d(image_size=40), ConvBase()
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    ref_params = [ref.conv1, ref.conv2, ref.conv3]
    for mine, theirs in zip([m for m in ours.modules() if isinstance(m, nn.Conv1d)], ref_params, strict=True):
        theirs.load_state_dict(mine.state_dict())
    ref.linear.load_state_dict(ours.head.state_dict())
    x = torch.randn(16, 40)
    torch.testing.assert_close(ours(x), ref(x))


def test_paper_gru_matches_grubase() -> None:
    from lit_tricks.models import GRU1d

    torch.manual_seed(0)
    model = GRU1d(num_classes=10, in_channels=1, image_size=(1, 40))
    assert sum(p.numel() for p in model.parameters()) == 5134  # GRUBase: 2 x 162 GRU + Linear(480, 10)
    # oracle: GRUBase's forward (mnist1d repository), written against torch.nn.GRU directly
    gru = nn.GRU(1, 6, batch_first=True, bidirectional=True)
    gru.load_state_dict(model.gru.state_dict())
    x = torch.randn(5, 1, 1, 40)
    seq = x.reshape(5, 40, 1)
    out, _ = gru(seq, torch.zeros(2, 5, 6))
    expected = model.head(out.reshape(5, -1))
    torch.testing.assert_close(model(x), expected)
    assert GRU1d(image_size=40, bidirectional=False).head.in_features == 240
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        GRU1d(hidden_size=0)


def test_paper_logistic_regression_size() -> None:
    logreg = MLP(num_classes=10, in_channels=1, image_size=(1, 40), hidden=[])
    assert sum(p.numel() for p in logreg.parameters()) == 410  # LinearBase: Linear(40, 10)
