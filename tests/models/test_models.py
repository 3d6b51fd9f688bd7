"""Reference models: shapes for the supported image sizes, torchvision by name, bad names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_tricks.models import MLP, SmallCNN, torchvision_model


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_small_cnn_sizes(channels: int, size: int) -> None:
    model = SmallCNN(num_classes=7, in_channels=channels, image_size=(size, size))
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == (1 if size <= 16 else 2)


def test_small_cnn_is_small() -> None:
    assert sum(p.numel() for p in SmallCNN().parameters()) < 100_000


def test_mlp_flattens_and_validates() -> None:
    mlp = MLP(num_classes=3, in_channels=3, image_size=4, hidden=(16,), batch_norm=True)
    assert mlp(torch.rand(5, 3, 4, 4)).shape == (5, 3)
    assert MLP(num_classes=2, in_features=6, hidden=())(torch.rand(4, 6)).shape == (4, 2)
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="dropout"):
        SmallCNN(dropout=1.0)


def test_torchvision_model_adapts_stem_channels_and_head() -> None:
    model = torchvision_model("resnet18", num_classes=10, in_channels=1, image_size=8)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    big = torchvision_model("resnet18", num_classes=5, image_size=224)
    assert big.conv1.stride == (2, 2) and big.fc.out_features == 5
    with pytest.raises(ValueError, match="torchvision classification model"):
        torchvision_model("resnet19")


def test_find_head_is_the_last_linear_and_surgery_reexports_it() -> None:
    from torch import nn

    from lit_tricks.models import find_head
    from lit_tricks.modules import surgery

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3)))
    parent, attr, layer = find_head(model)  # type: ignore[misc]
    assert parent is model[2] and attr == "0" and layer is model[2][0]
    assert find_head(nn.Sequential(nn.ReLU())) is None
    assert surgery.find_head is find_head
