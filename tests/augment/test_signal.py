"""1-D signal augmentation (MNIST-1D): shift modes against torch.roll/padding, shear, noise, scale, presets seeded."""

from __future__ import annotations

import pytest
import torch

from lit_tricks.augment import SignalPipeline
from lit_tricks.augment.signal import AmplitudeScale, RandomShear1d, RandomShift1d, SignalNoise
from tests.augment.presets import SIGNAL_PRESETS, load_preset


def _shift_of(module: RandomShift1d, seed: int) -> int:
    torch.manual_seed(seed)
    return int(torch.randint(-module.max_shift, module.max_shift + 1, ()))


def test_shift_modes_match_roll_and_padding() -> None:
    x = torch.arange(1.0, 11.0).reshape(1, 1, 10)
    for seed in range(20):
        roll, zeros, edge = RandomShift1d(3, "roll"), RandomShift1d(3, "zeros"), RandomShift1d(3, "edge")
        k = _shift_of(roll, seed)
        torch.manual_seed(seed)
        assert torch.equal(roll(x), torch.roll(x, k, dims=-1))
        torch.manual_seed(seed)
        z = zeros(x)
        torch.manual_seed(seed)
        e = edge(x)
        assert z.shape == x.shape == e.shape
        if k > 0:
            assert torch.equal(z[..., :k], torch.zeros(1, 1, k)) and torch.equal(z[..., k:], x[..., :-k])
            assert torch.equal(e[..., :k], torch.ones(1, 1, k))  # the first sample repeated
        elif k < 0:
            assert torch.equal(z[..., k:], torch.zeros(1, 1, -k)) and torch.equal(z[..., :k], x[..., -k:])
            assert torch.equal(e[..., k:], torch.full((1, 1, -k), 10.0))
        else:
            assert torch.equal(z, x)


def test_noise_and_scale() -> None:
    x = torch.zeros(1, 1, 4000)
    torch.manual_seed(0)
    n = SignalNoise(0.5)(x)
    assert abs(float(n.std()) - 0.5) < 0.03 and n.shape == x.shape
    y = torch.ones(1, 1, 40)
    torch.manual_seed(0)
    s = AmplitudeScale(0.8, 1.2)(y)
    assert torch.allclose(s, s[..., :1].expand_as(s)) and 0.8 <= float(s[0, 0, 0]) <= 1.2


def test_shear_adds_a_centred_ramp_within_the_bound() -> None:
    x = torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(0))
    slopes = []
    for seed in range(200):
        torch.manual_seed(seed)
        d = (RandomShear1d(2.4)(x) - x).reshape(-1)
        c = float(d[-1] - d[0])  # the ramp rises by c from the first sample to the last
        # oracle: the generator's ramp written out, c * (i / (L - 1) - 1/2)
        ramp = c * (torch.arange(40, dtype=torch.float64) / 39 - 0.5)
        assert torch.allclose(d.double(), ramp, atol=1e-5)
        slopes.append(c)
    assert max(abs(c) for c in slopes) <= 2.4 + 1e-5
    assert min(slopes) < -2.0 and max(slopes) > 2.0 and abs(sum(slopes) / len(slopes)) < 0.3  # uniform, both signs
    assert torch.equal(RandomShear1d(0.0)(x), x)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    RandomShear1d(0.0)(x)
    assert torch.equal(torch.get_rng_state(), state)  # off draws nothing


def test_bad_arguments_fail_with_the_name() -> None:
    with pytest.raises(ValueError, match="max_shear: expected a number >= 0, got -1"):
        RandomShear1d(-1)
    with pytest.raises(ValueError, match="mode"):
        RandomShift1d(2, "wrap")
    with pytest.raises(ValueError, match="max_shift"):
        RandomShift1d(-1)
    with pytest.raises(ValueError, match="unknown name 'flip'"):
        SignalPipeline(["flip"])


@pytest.mark.parametrize("name", SIGNAL_PRESETS)
def test_signal_presets_keep_shape_and_reproduce(name: str) -> None:
    pipe, _ = load_preset(name)
    assert isinstance(pipe, SignalPipeline) and len(pipe.steps) >= 1
    x = torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(pipe(x))
    assert all(o.shape == x.shape and o.dtype == x.dtype for o in outs)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
