"""Batch MixUp/CutMix targets, flip and shift test-time augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lit_tricks.augment import batch_mix, parse_tta, tta_flip, tta_shift
from lit_tricks.validation import ArgumentError


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


def _rolled(x: Tensor, k: int) -> Tensor:
    """Oracle for a circular shift by k along the last axis, by index arithmetic (not torch.roll)."""
    n = x.shape[-1]
    return x[..., (torch.arange(n) - k) % n]


def test_tta_shift_averages_the_circular_shifts() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))  # position-dependent: shifts matter
    x = torch.randn(6, 1, 1, 12)
    expected = sum(net(_rolled(x, k)).softmax(-1) for k in range(-3, 4)) / 7
    assert torch.allclose(tta_shift(net, x, max_shift=3), expected, atol=1e-6)
    assert not torch.allclose(expected, net(x).softmax(-1), atol=1e-3)  # the shifts changed something
    raw = sum(net(_rolled(x, k)) for k in (-1, 0, 1)) / 3
    assert torch.allclose(tta_shift(net, x, max_shift=1, probabilities=False), raw, atol=1e-6)
    assert torch.allclose(tta_shift(net, x, max_shift=0), net(x).softmax(-1))  # the model alone

    def invariant(t: Tensor) -> Tensor:  # sums over time: every circular shift gives the same output
        return net(t.sum(-1, keepdim=True).expand_as(t))

    assert torch.allclose(tta_shift(invariant, x, max_shift=5), invariant(x).softmax(-1), atol=1e-6)
    with pytest.raises(ArgumentError, match="tta_shift: max_shift must be an int >= 0, got -1"):
        tta_shift(net, x, max_shift=-1)


@pytest.mark.parametrize("spec", [None, False, True, "flip", "shift:1", "shift:12"])
def test_parse_tta_accepts(spec: object) -> None:
    fn = parse_tta(spec)
    assert (fn is None) == (spec in (None, False))
    if isinstance(spec, str) and spec.startswith("shift:"):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 3))
        calls: list[Tensor] = []

        def model(t: Tensor) -> Tensor:
            calls.append(t)
            return net(t)

        fn(model, torch.randn(2, 1, 1, 40))  # type: ignore[misc]
        assert len(calls) == 2 * int(spec.split(":")[1]) + 1


@pytest.mark.parametrize("spec", ["shift", "shift:0", "shift:-2", "shift:x", "rotate", 1, "true"])
def test_parse_tta_refuses_in_one_line(spec: object) -> None:
    with pytest.raises(ArgumentError, match=r"^tta must be false, true, 'flip' or 'shift:<n>'") as err:
        parse_tta(spec)
    assert "\n" not in str(err.value) and repr(spec) in str(err.value)
