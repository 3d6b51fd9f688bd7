"""Batch MixUp/CutMix targets and flip test-time augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lit_tricks.augment import batch_mix, tta_flip


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_batch_mix_soft_targets_seeded(kind: str) -> None:
    x = torch.rand(8, 3, 8, 8)
    y = torch.arange(8) % 4
    mix = batch_mix(kind, alpha=1.0, num_classes=4)
    torch.manual_seed(0)
    xm, ym = mix(x, y)
    torch.manual_seed(0)
    xm2, ym2 = mix(x, y)
    assert xm.shape == x.shape and xm.dtype == x.dtype and ym.shape == (8, 4) and ym.dtype == x.dtype
    assert torch.allclose(ym.sum(-1), torch.ones(8))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    assert not torch.equal(xm, x)
    assert (ym.max(-1).values < 1).any()  # at least one target is mixed


def test_batch_mix_p0_and_validation() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    xm, ym = batch_mix("mixup", num_classes=3, p=0.0)(x, y)
    assert torch.equal(xm, x) and torch.equal(ym, torch.nn.functional.one_hot(y, 3).float())
    with pytest.raises(ValueError, match=r"kind: expected one of \['mixup', 'cutmix', 'both'\]"):
        batch_mix("mix", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        batch_mix("mixup", num_classes=1)
    with pytest.raises(TypeError, match="x must be a float batch"):
        batch_mix("mixup", num_classes=3)(x[0], y)


def test_tta_flip_averages_probabilities() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(5, 1, 4, 4)
    expected = (net(x).softmax(-1) + net(x.flip(-1)).softmax(-1)) / 2
    assert torch.allclose(tta_flip(net, x), expected)
    four = tta_flip(net, x, vertical=True)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
    assert torch.allclose(four, sum(net(f).softmax(-1) for f in flips) / 4)

    def symmetric(t: Tensor) -> Tensor:
        return net(t + t.flip(-1))

    assert torch.allclose(tta_flip(symmetric, x), symmetric(x).softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match=r"x: expected a batch \(N, C, H, W\)"):
        tta_flip(net, x[0])
