"""Model surgery on its own: norm swaps (torchvision resnet18 too), weight norm, dropout kinds, init, BN statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_tricks.models import MLP, SmallCNN, torchvision_model
from lit_tricks.modules.surgery import (
    BatchNormNd,
    DropConnectLinear,
    GaussianDropout,
    init_weights,
    recalibrate_bn,
    set_dropout,
    swap_norm,
)


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_resnet18_group8_has_no_batchnorm_and_20_groupnorms() -> None:
    model = swap_norm(torchvision_model("resnet18", num_classes=10), "group:8")
    assert _count(model, nn.modules.batchnorm._BatchNorm) == 0
    assert _count(model, nn.GroupNorm) == 20
    assert all(m.num_groups == 8 for m in model.modules() if isinstance(m, nn.GroupNorm))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_affine_params_are_kept_and_groups_fit_the_channels() -> None:
    model = SmallCNN(width=12)
    bn = model.features[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    weight, bias = bn.weight.clone(), bn.bias.clone()
    swap_norm(model, {"kind": "group", "num_groups": 8})
    gn = model.features[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 6  # largest divisor of 12 that is <= 8
    assert torch.equal(gn.weight, weight) and torch.equal(gn.bias, bias)
    swap_norm(model, "batch")
    assert isinstance(model.features[1], BatchNormNd) and torch.equal(model.features[1].weight, weight)
    swap_norm(model, "layer")
    assert isinstance(model.features[1], nn.GroupNorm) and model.features[1].num_groups == 1
    swap_norm(model, "none")
    assert _count(model, nn.GroupNorm) == 0 and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_weight_norm_keeps_outputs_equal_at_init() -> None:
    torch.manual_seed(0)
    model = MLP(num_classes=4, image_size=8)
    x = torch.randn(5, 1, 8, 8)
    before = model(x)
    swap_norm(model, "weight")
    assert torch.nn.utils.parametrize.is_parametrized(model.head, "weight")
    assert torch.allclose(model(x), before, atol=1e-6)
    cnn = swap_norm(SmallCNN(), "weight")
    assert _count(cnn, nn.BatchNorm2d) == 0 and torch.nn.utils.parametrize.is_parametrized(cnn.features[0])


def test_bad_norm_names_the_argument() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        swap_norm(SmallCNN(), "instance")
    with pytest.raises(ValueError, match="group:<num_groups>"):
        swap_norm(SmallCNN(), "group:x")


def test_dropout_set_insert_gaussian_dropconnect() -> None:
    model = SmallCNN()
    set_dropout(model, 0.3)
    assert model.dropout.p == 0.3
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    keys = list(net.state_dict())
    set_dropout(net, 0.25)  # no Dropout layer: one is applied to the head's input, every key kept
    assert isinstance(net[2], nn.Linear) and isinstance(net[2].input_dropout, nn.Dropout)
    assert net[2].input_dropout.p == 0.25 and list(net.state_dict()) == keys
    set_dropout(model, 0.2, kind="gaussian")
    assert isinstance(model.dropout, GaussianDropout) and model.dropout.p == 0.2
    set_dropout(model, 0.5, kind="dropconnect")
    assert isinstance(model.head, DropConnectLinear) and model.head.p == 0.5
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))  # eval: no noise
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
            set_dropout(model, p)


def test_gaussian_dropout_keeps_the_mean_with_the_dropout_variance() -> None:
    torch.manual_seed(0)
    out = GaussianDropout(0.2).train()(torch.ones(200_000))
    assert abs(float(out.mean()) - 1.0) < 0.01 and abs(float(out.var()) - 0.2 / 0.8) < 0.01


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                                    "orthogonal"])
def test_init_schemes_zero_biases(scheme: str) -> None:
    model = init_weights(MLP(hidden=(64,)), scheme)
    assert all(float(m.bias.detach().abs().sum()) == 0.0 for m in model.modules() if isinstance(m, nn.Linear))


def test_kaiming_fan_out_std_and_orthogonal_rows() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(400, 300)
    init_weights(lin, {"scheme": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"})
    assert abs(float(lin.weight.std()) - math.sqrt(2.0 / 300)) < 0.002
    init_weights(lin, "orthogonal", nonlinearity="linear")
    assert torch.allclose(lin.weight @ lin.weight.T, torch.eye(300), atol=1e-4)
    with pytest.raises(ValueError, match="init must be one of"):
        init_weights(lin, "he")


def test_recalibrate_bn_recomputes_population_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(64, 3) * 3 + 1
    model[1].running_mean.fill_(100.0)
    model.eval()
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=32)
    recalibrate_bn(model, loader)
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)  # cumulative average of equal batches
    assert not model.training and model[1].momentum == 0.1
    recalibrate_bn(model, loader, num_batches=1)
    assert torch.allclose(model[1].running_mean, h[:32].mean(0), atol=1e-5)
