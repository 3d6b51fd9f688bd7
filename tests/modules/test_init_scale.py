"""Xavier initialization's weight scale against Glorot & Bengio (2010): ``Var(W) = gain^2 * 2 / (fan_in + fan_out)``
(uniform on ``+-gain * sqrt(6 / (fan_in + fan_out))``), with fans written out by hand for Linear, Conv and GRU
weights; recurrent weights are initialized too. Tolerances: 5 standard errors of the sample std (relative SE
``sqrt((kurtosis - 1) / 4n)``: 0.2/n for the uniform, 0.5/n for the normal)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_tricks.modules.initialization import init_weights


def _tol(n: int, normal: bool) -> float:
    return 5 * math.sqrt((0.5 if normal else 0.2) / n)


@pytest.mark.parametrize(("layer", "fan_in", "fan_out"), [
    (nn.Linear(300, 200), 300, 200),
    (nn.Conv2d(16, 32, 3), 16 * 9, 32 * 9),
    (nn.Conv1d(8, 24, 5), 8 * 5, 24 * 5),
])
@pytest.mark.parametrize(("nonlinearity", "gain"), [("relu", math.sqrt(2.0)), ("tanh", 5 / 3), ("linear", 1.0)])
def test_xavier_scale_is_glorots(layer: nn.Module, fan_in: int, fan_out: int, nonlinearity: str, gain: float) -> None:
    torch.manual_seed(0)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    w = layer.weight  # type: ignore[union-attr]
    init_weights(layer, {"scheme": "xavier_uniform", "nonlinearity": nonlinearity})
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert abs(float(w.std()) / std - 1.0) < _tol(w.numel(), normal=False)
    init_weights(layer, {"scheme": "xavier_normal", "nonlinearity": nonlinearity})
    assert abs(float(w.std()) / std - 1.0) < _tol(w.numel(), normal=True)
    assert abs(float(w.mean())) < 5 * std / math.sqrt(w.numel())
    assert float(layer.bias.abs().sum()) == 0.0  # type: ignore[union-attr]


def test_an_explicit_gain_overrides_the_nonlinearity() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(400, 400)
    init_weights(lin, {"scheme": "xavier_normal", "nonlinearity": "relu", "gain": 0.5})
    assert abs(float(lin.weight.std()) / (0.5 * math.sqrt(2.0 / 800)) - 1.0) < _tol(160_000, normal=True)


def test_recurrent_weights_get_the_scheme_and_zero_biases() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(100, 50, bidirectional=True)
    init_weights(gru, {"scheme": "xavier_uniform", "nonlinearity": "linear"})
    for suffix in ("_l0", "_l0_reverse"):
        w_ih = getattr(gru, "weight_ih" + suffix)  # (3H, in): fan_in = 100, fan_out = 150
        bound = math.sqrt(6.0 / (100 + 150))
        assert float(w_ih.abs().max()) <= bound and float(w_ih.abs().max()) > 0.99 * bound
        assert float(getattr(gru, "bias_ih" + suffix).abs().sum()) == 0.0
        assert float(getattr(gru, "bias_hh" + suffix).abs().sum()) == 0.0
    init_weights(gru, "orthogonal", nonlinearity="linear")
    w_hh = gru.weight_hh_l0  # (3H, H): orthonormal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(50), atol=1e-5, rtol=0)
