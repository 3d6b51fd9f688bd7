"""1-D signal augmentation (MNIST-1D): shift modes against torch.roll/padding, shear, noise, scale, presets seeded."""

from __future__ import annotations

import pytest
import torch

from lit_tricks.augment import SignalPipeline
from lit_tricks.augment.signal import SIGNAL_STEPS, AmplitudeScale, RandomShear1d, RandomShift1d, SignalNoise
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


def _seed_drawing(module: RandomShift1d, k: int) -> int:
    """A global seed under which the per-sample ``forward`` draws shift ``k``."""
    return next(s for s in range(10_000) if _shift_of(module, s) == k)


@pytest.mark.parametrize("mode", ["roll", "zeros", "edge"])
def test_batch_shift_is_the_per_sample_shift_of_each_row(mode: str) -> None:
    """``apply_batch``: row i is what ``forward`` makes of sample i with the i-th draw of the generator."""
    shift = RandomShift1d(3, mode)
    x = torch.randn(64, 1, 2, 10, generator=torch.Generator().manual_seed(0))
    out = shift.apply_batch(x, torch.Generator().manual_seed(7))
    ks = torch.randint(-3, 4, (64,), generator=torch.Generator().manual_seed(7))
    assert len(set(ks.tolist())) == 7  # every sample its own draw
    for i, k in enumerate(ks.tolist()):
        torch.manual_seed(_seed_drawing(shift, k))
        assert torch.equal(out[i], shift(x[i]))


def test_batch_noise_scale_and_probability() -> None:
    x = torch.ones(500, 1, 1, 40)
    noise = SignalNoise(0.5).apply_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(noise, x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    scaled = AmplitudeScale(0.8, 1.2).apply_batch(x, torch.Generator().manual_seed(2))
    factors = scaled[:, 0, 0, 0]
    assert torch.equal(scaled, factors[:, None, None, None].expand_as(x))  # one factor per sample
    assert 0.8 <= float(factors.min()) and float(factors.max()) <= 1.2 and factors.unique().numel() == 500
    ramp = torch.arange(40.0).expand(500, 1, 1, 40)
    moved = RandomShift1d(4, "roll", p=0.3).apply_batch(ramp, torch.Generator().manual_seed(3))
    kept = (moved == ramp).all(-1).flatten().float().mean()
    assert abs(float(kept) - (0.7 + 0.3 / 9)) < 0.08  # unshifted: 1 - p, plus the draws of k = 0


def test_pipeline_batch_draws_only_from_the_generator() -> None:
    pipe = SignalPipeline([{"shift": {"max_shift": 4}}, {"noise": {"sigma": 0.1}}, "scale"])
    x = torch.randn(8, 1, 1, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = pipe.apply_batch(x, torch.Generator().manual_seed(5))
    b = pipe.apply_batch(x, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())  # the global RNG untouched
    assert torch.equal(a, b) and not torch.equal(a, pipe.apply_batch(x, torch.Generator().manual_seed(6)))
    assert a.shape == x.shape and a.dtype == x.dtype


class _ForwardOnlyStep(torch.nn.Module):
    """A step with a forward only (one sample, global RNG), as a newly registered step may be."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + torch.rand(())) + torch.randn_like(x)


def test_pipeline_batch_runs_a_forward_only_step_per_sample_under_drawn_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle: each sample through the step's forward after torch.manual_seed(s_i), s_i the generator's draws."""
    monkeypatch.setitem(SIGNAL_STEPS, "forward_only", _ForwardOnlyStep)
    pipe = SignalPipeline(["forward_only", {"noise": {"sigma": 0.1}}])
    x = torch.randn(5, 1, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    out = pipe.apply_batch(x, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(1).get_state())  # the global RNG restored

    gen = torch.Generator().manual_seed(7)
    seeds = torch.randint(0, 2**62, (5,), generator=gen).tolist()
    rows = []
    for seed, sample in zip(seeds, x):
        torch.manual_seed(seed)
        rows.append(sample * (1 + torch.rand(())) + torch.randn_like(sample))
    expected = torch.stack(rows) + 0.1 * torch.randn(x.shape, generator=gen)
    assert torch.equal(out, expected)


def test_batch_shear_is_the_papers_ramp_with_one_coefficient_per_sample() -> None:
    """Oracle: x_i + c_i * linspace(-1/2, 1/2, L), c_i = max_shear * (2 u_i - 1), u_i the generator's i-th uniform
    (the MNIST-1D generator's ``coeff = shear_scale * (U - 1/2)``, written out)."""
    x = torch.randn(300, 1, 40, generator=torch.Generator().manual_seed(0))
    out = RandomShear1d(3.5).apply_batch(x, torch.Generator().manual_seed(4))
    u = torch.rand(300, generator=torch.Generator().manual_seed(4))
    ramp = torch.tensor([-0.5 + j / 39 for j in range(40)])
    expected = x + (3.5 * (2 * u - 1))[:, None, None] * ramp
    assert torch.allclose(out, expected, rtol=0, atol=8 * torch.finfo(torch.float32).eps * (1 + x.abs().max()))
    slopes = (out - x)[:, 0, -1] - (out - x)[:, 0, 0]  # c_i: uniform over [-3.5, 3.5], each sample its own
    assert float(slopes.abs().max()) <= 3.5 + 1e-5 and slopes.unique().numel() == 300
    assert abs(float(slopes.mean())) < 0.4 and abs(float(slopes.var()) - 3.5**2 / 3) < 0.8  # var of U(-a, a): a^2/3
    assert torch.equal(RandomShear1d(0.0).apply_batch(x, torch.Generator()), x)
