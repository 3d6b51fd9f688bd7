"""Norm and dropout insertion around hidden activations, on the MNIST-1D paper CNN and an MLP."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lit_tricks.models import MLP, ConvNet1d, SmallCNN
from lit_tricks.modules.insertion import (
    ActivationBlock,
    apply_dropout,
    apply_norm,
    hidden_sites,
    insert_dropout,
    insert_norm,
)
from lit_tricks.modules.surgery import BatchNormNd, DropConnectLinear
from lit_tricks.modules.trick_module import TrickModule


def _cnn() -> ConvNet1d:
    torch.manual_seed(0)
    return ConvNet1d(num_classes=10, in_channels=1, image_size=(1, 40))


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(num_classes=10, in_channels=1, image_size=(1, 40), hidden=[100, 100])


def _blocks(model: nn.Module) -> list[ActivationBlock]:
    return [m for m in model.modules() if isinstance(m, ActivationBlock)]


@pytest.mark.parametrize(("make", "n_hidden"), [(_cnn, 3), (_mlp, 2)])
def test_batch_norm_is_inserted_before_each_hidden_activation(make: type[nn.Module], n_hidden: int) -> None:
    model = make()
    assert len(hidden_sites(model)) == n_hidden
    assert insert_norm(model, "batch") == n_hidden
    blocks = _blocks(model)
    assert len(blocks) == n_hidden
    for block in blocks:  # norm first, then the activation
        assert isinstance(block[0], BatchNormNd) and isinstance(block[1], nn.ReLU) and len(block) == 2
    assert sum(isinstance(m, BatchNormNd) for m in model.modules()) == n_hidden
    assert isinstance(model.head, nn.Linear)  # the head is never normed
    x = torch.randn(16, 1, 1, 40)
    model.train()
    out_train = model(x)
    assert out_train.shape == (16, 10)
    # train mode: batch statistics, so one sample's output depends on the rest of the batch
    assert not torch.allclose(model(x[:4])[0], out_train[0], atol=1e-5)
    model.eval()  # eval mode: running statistics, per-sample outputs
    assert torch.allclose(model(x[:4])[0], model(x)[0], atol=1e-5)


def test_group_norm_must_divide_the_channels_and_fails_with_one_line() -> None:
    model = _cnn()
    before = [k for k in model.state_dict()]
    with pytest.raises(ValueError, match=r"group:4: layer features\.0 \(Conv1d\) has 25 channels") as info:
        insert_norm(model, "group", 4)
    assert "\n" not in str(info.value)
    assert list(model.state_dict()) == before  # nothing inserted on failure
    assert insert_norm(model, "group", 5) == 3
    assert all(isinstance(b[0], nn.GroupNorm) and b[0].num_groups == 5 for b in _blocks(model))
    with pytest.raises(ValueError, match="100 channels, not divisible by 3"):
        apply_norm(_mlp(), "group:3")


def test_layer_norm_on_the_mlp_normalizes_each_sample() -> None:
    model = apply_norm(_mlp(), "layer")
    norms = [b[0] for b in _blocks(model)]
    assert len(norms) == 2 and all(isinstance(n, nn.GroupNorm) and n.num_groups == 1 for n in norms)
    x = torch.randn(8, 40)
    model.train()
    assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)  # no batch statistics


def test_state_dict_keys_original_kept_norm_keys_added() -> None:
    plain = _cnn()
    normed = apply_norm(copy.deepcopy(plain), "batch")
    old, new = set(plain.state_dict()), set(normed.state_dict())
    assert old <= new  # every original parameter keeps its key
    added = new - old
    assert {k.rsplit(".", 1)[0] for k in added} == {"features.1.0", "features.3.0", "features.5.0"}
    missing, unexpected = normed.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {k for k in added if not k.endswith("num_batches_tracked")} and not unexpected
    with pytest.raises(RuntimeError, match="Missing key"):
        normed.load_state_dict(plain.state_dict())  # strict load of an un-normed checkpoint fails


def test_model_with_norms_is_swapped_not_inserted() -> None:
    model = SmallCNN(batch_norm=True)
    n_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    apply_norm(model, "group:8")
    assert not _blocks(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == n_before


def test_dropout_every_hidden_after_each_activation_inverted() -> None:
    plain = _cnn().eval()
    model = apply_dropout(copy.deepcopy(plain), 0.5, placement="every_hidden")
    blocks = _blocks(model)
    assert len(blocks) == 3
    assert all(isinstance(b[0], nn.ReLU) and isinstance(b[1], nn.Dropout) and b[1].p == 0.5 for b in blocks)
    x = torch.randn(32, 1, 1, 40)
    model.eval()
    assert torch.equal(model(x), plain(x))  # inverted dropout: eval is the plain network
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))
    # norm inserted after dropout still goes first, dropout last
    insert_norm(model, "batch")
    assert all(isinstance(b[0], BatchNormNd) and isinstance(b[2], nn.Dropout) for b in _blocks(model))


def test_dropconnect_every_hidden_replaces_hidden_linears_only() -> None:
    model = apply_dropout(_mlp(), 0.3, kind="dropconnect", placement="every_hidden")
    hidden = [m for m in model.features if isinstance(m, nn.Linear)]
    assert len(hidden) == 2 and all(isinstance(m, DropConnectLinear) and m.p == 0.3 for m in hidden)
    assert not isinstance(model.head, DropConnectLinear)


def test_trick_module_inserts_norm_and_dropout_from_its_arguments() -> None:
    module = TrickModule(_cnn(), norm="batch", dropout=0.1, dropout_placement="every_hidden")
    blocks = _blocks(module.model)
    assert len(blocks) == 3 and all(len(b) == 3 for b in blocks)
    assert module.hparams["dropout_placement"] == "every_hidden"
    assert module(torch.randn(4, 1, 1, 40)).shape == (4, 10)
    with pytest.raises(ValueError, match="dropout_placement must be one of"):
        TrickModule(_cnn(), dropout=0.1, dropout_placement="everywhere")
    head = TrickModule(_cnn(), dropout=0.1)  # default placement: one layer before the head
    assert not _blocks(head.model) and sum(isinstance(m, nn.Dropout) for m in head.model.modules()) == 1


def test_every_hidden_on_a_model_without_activation_modules_fails() -> None:
    with pytest.raises(ValueError, match="no hidden activation"):
        apply_dropout(nn.Sequential(nn.Linear(4, 2)), 0.1, placement="every_hidden")
    assert insert_dropout(nn.Sequential(nn.Linear(4, 2)), 0.1) == 0
