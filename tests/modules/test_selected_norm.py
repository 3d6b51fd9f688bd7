"""BatchNorm on selected layers only (``module.norm={kind: batch, layers: [...]}``; the notes (000)): inserted after
the matching conv/linear layers or swapped/removed at the matching norm layers, every other layer as built; a
pattern that matches nothing, and a norm with nowhere to act, are refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_tricks.models import MLP, ConvNet1d, SmallCNN
from lit_tricks.modules.surgery import BatchNormNd
from lit_tricks.modules.trick_module import TrickModule


def test_batch_norm_is_inserted_after_the_selected_convs_only() -> None:
    torch.manual_seed(0)
    module = TrickModule(ConvNet1d(num_classes=3, image_size=(1, 40)),
                         norm={"kind": "batch", "layers": ["features.0", "features.4"]})
    f = module.model.features
    assert sum(isinstance(m, BatchNormNd) for m in module.model.modules()) == 2
    assert isinstance(f[1][0], BatchNormNd) and isinstance(f[3], nn.ReLU) and isinstance(f[5][0], BatchNormNd)
    x = torch.randn(8, 1, 1, 40)
    module.train()

    def bn(h: torch.Tensor) -> torch.Tensor:  # a fresh BatchNorm in training: batch statistics, weight 1, bias 0
        return (h - h.mean((0, 2), keepdim=True)) / torch.sqrt(h.var((0, 2), unbiased=False, keepdim=True) + 1e-5)

    h = torch.relu(bn(f[0](x.reshape(8, 1, 40))))
    h = torch.relu(f[2](h))  # the unselected conv: no norm
    h = torch.relu(bn(f[4](h)))
    torch.testing.assert_close(module(x), module.model.head(h.flatten(1)))


def test_fnmatch_patterns_select_and_a_pattern_matching_nothing_is_refused_in_one_line() -> None:
    torch.manual_seed(0)
    mlp = TrickModule(MLP(hidden=[8, 8, 8]), norm={"kind": "batch", "layers": ["features.[13]"]}).model
    assert sum(isinstance(m, BatchNormNd) for m in mlp.modules()) == 2
    with pytest.raises(ValueError, match=r"norm: layers pattern 'features.9' matches none of the model's hidden "
                                         r"conv/linear layers \['features.1', 'features.3'\]") as err:
        TrickModule(MLP(hidden=[8, 8]), norm={"kind": "batch", "layers": ["features.9"]})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"norm: layers must be a non-empty list"):
        TrickModule(MLP(hidden=[8]), norm={"kind": "batch", "layers": "features.1"})
    with pytest.raises(ValueError, match=r"norm has unknown keys \['layer'\]"):
        TrickModule(MLP(hidden=[8]), norm={"kind": "batch", "layer": ["features.1"]})
    with pytest.raises(ValueError, match=r"kind=weight reparametrizes every conv/linear"):
        TrickModule(MLP(hidden=[8]), norm={"kind": "weight", "layers": ["features.1"]})


def test_on_a_normed_model_the_selected_norm_layers_are_swapped_or_removed() -> None:
    torch.manual_seed(0)
    cnn = SmallCNN(num_classes=3, image_size=8, width=4)
    kept = TrickModule(cnn, norm={"kind": "none", "layers": ["features.1", "features.4"]}).model
    bns = [n for n, m in kept.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["features.8", "features.11"]  # BatchNorm on the second stage only
    torch.manual_seed(0)
    grouped = TrickModule(SmallCNN(num_classes=3, image_size=8, width=4),
                          norm={"kind": "group", "num_groups": 2, "layers": ["features.1*"]}).model
    assert [n for n, m in grouped.named_modules() if isinstance(m, nn.GroupNorm)] == ["features.1", "features.11"]


def test_a_norm_with_nowhere_to_act_is_refused_in_one_line() -> None:
    torch.manual_seed(0)
    for kind in ("batch", "group", "layer"):
        with pytest.raises(ValueError, match=rf"norm={kind}: the model has no norm layer to swap and no hidden"):
            TrickModule(MLP(hidden=[]), norm=kind)  # logistic regression: one Linear, nothing hidden
