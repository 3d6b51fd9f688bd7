"""The weight-decay rule, explicit per-group decay, decoupled decay against torch's AdamW, the description table."""

from __future__ import annotations

import torch
from torch import nn

from lit_tricks.functional.param_groups import (
    decay_mask,
    decoupled_weight_decay_,
    describe_param_groups,
    param_groups,
    split_decay,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)
        self.pos = nn.Parameter(torch.zeros(1, 4, 4))

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def test_decay_rule_keeps_only_conv_and_linear_weights() -> None:
    decay, no_decay = split_decay(_Net())
    assert decay == ["conv.weight", "fc.weight"]
    assert set(no_decay) == {"emb.weight", "conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "fc.bias",
                             "pos"}


def test_patterns_and_switches() -> None:
    mask = decay_mask(_Net(), exclude=["fc.*"], exclude_embedding=False)
    assert mask["fc.weight"] is False and mask["emb.weight"] is True and mask["conv.weight"] is True


def test_weight_norm_magnitude_is_not_decayed() -> None:
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    mask = decay_mask(lin)
    assert mask == {"bias": False, "parametrizations.weight.original0": False,
                    "parametrizations.weight.original1": True}


def test_groups_carry_explicit_decay_so_optimizer_defaults_never_apply() -> None:
    net = _Net()
    opt = torch.optim.AdamW(param_groups(net, 0.1), lr=1e-3)  # AdamW's own default decay is 0.01
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_negative_decay_raises() -> None:
    import pytest

    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(_Net(), -1.0)


def test_decoupled_decay_then_adam_equals_adamw() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(param_groups(a, 0.3), lr=0.05)
    for g in opt_a.param_groups:
        g["weight_decay"] = 0.0
    opt_b = torch.optim.AdamW(param_groups(b, 0.3), lr=0.05)
    x = torch.randn(8, 4)
    for _ in range(3):
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            if opt is opt_a:
                decoupled_weight_decay_(opt.param_groups)
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-7) and torch.allclose(a.bias, b.bias, atol=1e-7)


def test_description_lists_every_tensor_with_its_decay() -> None:
    text = describe_param_groups(_Net(), 0.05, l1=0.01)
    assert "conv.weight" in text and "bn.bias" in text
    row = next(line for line in text.splitlines() if line.startswith("fc.weight"))
    assert row.split()[-2:] == ["0.05", "0.01"]
    assert text.splitlines()[-1] == "2 decayed tensors, 8 not decayed"
