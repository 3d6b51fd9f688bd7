"""Multiplicative Gaussian noise on weights (``dropout_kind=weight_noise``) and the warning for dropout before an
L2 regression output (issue 17 item 3), against hand-written oracles."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_tricks.models import MLP
from lit_tricks.modules.insertion import apply_dropout
from lit_tricks.modules.surgery import DropConnectLinear, WeightNoiseLinear, noisy_layers, set_dropout
from lit_tricks.modules.trick_module import TrickModule


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(num_classes=10, in_channels=1, image_size=(1, 40), hidden=[32, 32])


def test_forward_is_the_linear_map_of_the_noisy_weights() -> None:
    torch.manual_seed(0)
    layer = WeightNoiseLinear.from_linear(nn.Linear(6, 4), p=0.2)
    x = torch.randn(5, 6)
    torch.manual_seed(7)
    out = layer.train()(x)
    torch.manual_seed(7)
    eps = torch.randn_like(layer.weight)  # the same draw, written out: W * (1 + sqrt(p / (1 - p)) * eps)
    expected = F.linear(x, layer.weight * (1.0 + math.sqrt(0.2 / 0.8) * eps), layer.bias)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # the gradient reaches the shared weight through the noise
    assert layer.weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, (1.0 + math.sqrt(0.2 / 0.8) * eps) * x.sum(0).expand(4, 6))
    assert torch.equal(layer.eval()(x), F.linear(x, layer.weight, layer.bias))  # eval: the weights as they are


def test_multiplier_has_dropconnects_mean_and_variance() -> None:
    layer = WeightNoiseLinear(1000, 1000, p=0.3)
    torch.manual_seed(0)
    m = layer.weight_mask()
    drop = DropConnectLinear(1000, 1000, p=0.3).weight_mask()
    assert abs(m.mean().item() - 1.0) < 3e-3 and abs(drop.mean().item() - 1.0) < 3e-3
    assert m.var().item() == pytest.approx(0.3 / 0.7, rel=0.01)
    assert drop.var().item() == pytest.approx(0.3 / 0.7, rel=0.01)


def test_head_and_every_hidden_placement_share_parameters_and_keys() -> None:
    model = _mlp()
    keys, head_weight = list(model.state_dict()), model.head.weight
    set_dropout(model, 0.1, kind="weight_noise")
    assert type(model.head) is WeightNoiseLinear and model.head.weight is head_weight
    assert list(model.state_dict()) == keys
    hidden = apply_dropout(_mlp(), 0.25, kind="weight_noise", placement="every_hidden")
    linears = [m for m in hidden.features if isinstance(m, nn.Linear)]
    assert len(linears) == 2 and all(type(m) is WeightNoiseLinear and m.p == 0.25 for m in linears)
    assert type(hidden.head) is nn.Linear
    # a DropConnect layer switched to weight noise keeps its parameters
    dc = apply_dropout(_mlp(), 0.2, kind="dropconnect", placement="every_hidden")
    w = dc.features[0].weight if isinstance(dc.features[0], nn.Linear) else next(
        m for m in dc.features if isinstance(m, nn.Linear)).weight
    apply_dropout(dc, 0.2, kind="weight_noise", placement="every_hidden")
    assert any(type(m) is WeightNoiseLinear and m.weight is w for m in dc.features)


def test_weight_noise_with_p_one_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.0"):
        set_dropout(_mlp(), 1.0, kind="weight_noise")


def test_dropout_before_an_l2_regression_output_warns_once() -> None:
    with pytest.warns(UserWarning, match=r"regression output trained with the L2 loss \(loss='mse'\)") as caught:
        TrickModule(_mlp(), loss="mse", dropout=0.2)
    assert sum("L2 loss" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrickModule(_mlp(), loss="mse")  # no dropout: no warning
        TrickModule(_mlp(), loss="cross_entropy", dropout=0.2)  # classification: no warning
    assert noisy_layers(_mlp()) == []
    assert noisy_layers(set_dropout(_mlp(), 0.2, kind="weight_noise")) == ["head"]


def test_additive_weight_noise_adds_p_times_a_standard_normal_to_every_weight() -> None:
    from lit_tricks.modules.noise import AdditiveWeightNoiseLinear, noisy_weight

    model = set_dropout(_mlp(), 0.05, kind="additive_weight_noise")
    layer = model.head
    assert type(layer) is AdditiveWeightNoiseLinear and layer.p == 0.05
    x = torch.randn(5, 32)
    torch.manual_seed(3)
    out = layer.train()(x)
    torch.manual_seed(3)
    eps = torch.randn_like(layer.weight)  # the same draw, written out: W + p * eps
    torch.testing.assert_close(out, F.linear(x, layer.weight + 0.05 * eps, layer.bias))
    out.sum().backward()  # additive noise: the weight's gradient is the plain layer's
    assert layer.weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, torch.ones(5, 10).T @ x)
    assert torch.equal(layer.eval()(x), F.linear(x, layer.weight, layer.bias))
    torch.manual_seed(0)
    w = torch.full((500, 400), 0.7)
    delta = noisy_weight(w, "additive_weight_noise", 0.05) - w  # 200k draws: std's relative SE 0.16 %
    assert abs(float(delta.mean())) < 5 * 0.05 / math.sqrt(w.numel()) and abs(float(delta.std()) / 0.05 - 1) < 0.01
