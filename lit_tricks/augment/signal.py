"""Augmentation of 1-D signals (MNIST-1D): random shift (zero/edge padding or roll), shear (a random linear
ramp), Gaussian noise, amplitude scale. Works on any float tensor ``(*, L)``: the last dimension is the
signal's time axis.

``forward`` augments one sample from torch's global RNG (the DataModule's per-sample seed reproduces it, as for
images); ``apply_batch(x, generator)`` augments a batch ``(N, *, L)`` at once, each sample with its own draws (one
tensor op per step draws all N shifts, noises or scales from ``generator``): what
:class:`lit_tricks.data.tensor_loader.TensorLoader` calls, one seeded generator per batch. A step registered in
:data:`SIGNAL_STEPS` without an ``apply_batch`` still works there: its ``forward`` runs per sample, each under a seed
drawn from the generator (:func:`per_sample_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_tricks.augment.steps import build_step, split_step
from lit_tricks.hydra_utils import to_plain

__all__ = ["SIGNAL_STEPS", "AmplitudeScale", "RandomShear1d", "RandomShift1d", "SignalNoise", "SignalPipeline",
           "per_sample_batch"]

SHIFT_MODES = ("zeros", "edge", "roll")


class RandomShift1d(nn.Module):
    """Shift the signal by an integer drawn uniformly from ``[-max_shift, max_shift]`` samples.

    ``mode``: zeros (the vacated samples are 0) | edge (they repeat the border sample) | roll (circular; what the
    MNIST-1D generator's own translation does). ``p``: probability of shifting at all.
    """

    def __init__(self, max_shift: int = 4, mode: str = "roll", p: float = 1.0) -> None:
        super().__init__()
        if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
            raise ValueError(f"max_shift: expected an int >= 0, got {max_shift!r}")
        if mode not in SHIFT_MODES:
            raise ValueError(f"mode: expected one of {list(SHIFT_MODES)}, got {mode!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.max_shift, self.mode, self.p = max_shift, mode, float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.max_shift == 0 or (self.p < 1.0 and float(torch.rand(())) >= self.p):
            return x
        k = int(torch.randint(-self.max_shift, self.max_shift + 1, ()))
        if k == 0:
            return x
        if self.mode == "roll":
            return torch.roll(x, k, dims=-1)
        length, s = x.shape[-1], abs(k)
        flat = x.reshape(-1, 1, length)
        pad = (s, 0) if k > 0 else (0, s)
        padded = F.pad(flat, pad, mode="constant" if self.mode == "zeros" else "replicate")
        out = padded[..., :length] if k > 0 else padded[..., s:]
        return out.reshape(x.shape)

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Each sample of ``x (N, *, L)`` shifted by its own draw (kept with probability ``p``)."""
        n, length = x.shape[0], x.shape[-1]
        k = torch.randint(-self.max_shift, self.max_shift + 1, (n,), generator=generator)
        if self.p < 1.0:
            k = torch.where(torch.rand(n, generator=generator) < self.p, k, 0)
        src = torch.arange(length) - k[:, None]  # out[i] = x[i - k], as torch.roll / the padded slices
        flat = x.reshape(n, -1, length)
        index = (src % length if self.mode == "roll" else src.clamp(0, length - 1))[:, None, :].expand_as(flat)
        out = flat.gather(-1, index)
        if self.mode == "zeros":
            out = out * ((src >= 0) & (src < length))[:, None, :].to(out.dtype)
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, mode={self.mode}, p={self.p}"


class RandomShear1d(nn.Module):
    """Add the ramp ``c * linspace(-1/2, 1/2, L)`` with ``c`` drawn uniformly from ``[-max_shear, max_shear]``.

    The MNIST-1D generator's own ``shear`` nuisance (Greydanus & Kobak 2020: ``coeff = shear_scale * (U - 1/2)``,
    ``shear_scale=0.75`` before the dataset is standardized, i.e. ``c`` in about +-2.4 of its standard deviations).
    """

    def __init__(self, max_shear: float = 2.4) -> None:
        super().__init__()
        if not isinstance(max_shear, int | float) or isinstance(max_shear, bool) or max_shear < 0:
            raise ValueError(f"max_shear: expected a number >= 0, got {max_shear!r}")
        self.max_shear = float(max_shear)

    def forward(self, x: Tensor) -> Tensor:
        if self.max_shear == 0:
            return x
        c = self.max_shear * (2 * float(torch.rand(())) - 1)
        return x + c * torch.linspace(-0.5, 0.5, x.shape[-1], dtype=x.dtype, device=x.device)

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Each sample of ``x (N, *, L)`` with its own ramp coefficient, all N drawn from ``generator`` at once."""
        if self.max_shear == 0:
            return x
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        c = self.max_shear * (2 * torch.rand(shape, generator=generator, dtype=x.dtype) - 1)
        return x + c * torch.linspace(-0.5, 0.5, x.shape[-1], dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"max_shear={self.max_shear}"


class SignalNoise(nn.Module):
    """``x + sigma * N(0, 1)`` (no clipping: the signals are standardized, not in [0, 1])."""

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        if not isinstance(sigma, int | float) or isinstance(sigma, bool) or sigma < 0:
            raise ValueError(f"sigma: expected a number >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sigma * torch.randn_like(x) if self.sigma > 0 else x

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.sigma == 0:
            return x
        return x + self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class AmplitudeScale(nn.Module):
    """Multiply the whole signal by a factor drawn uniformly from ``[low, high]``."""

    def __init__(self, low: float = 0.9, high: float = 1.1) -> None:
        super().__init__()
        if not 0.0 <= low <= high:
            raise ValueError(f"low, high: expected 0 <= low <= high, got {low!r}, {high!r}")
        self.low, self.high = float(low), float(high)

    def forward(self, x: Tensor) -> Tensor:
        factor = self.low + (self.high - self.low) * float(torch.rand(()))
        return x * factor

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * (self.low + (self.high - self.low) * torch.rand(shape, generator=generator, dtype=x.dtype))

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


#: step name -> factory (lengths in samples).
SIGNAL_STEPS: dict[str, Callable[..., nn.Module]] = {
    "shift": RandomShift1d,
    "shear": RandomShear1d,
    "noise": SignalNoise,
    "scale": AmplitudeScale,
}


class SignalPipeline(nn.Module):
    """Apply ``steps`` in order to one float signal ``(*, L)``; each step is ``{name: {kwargs}}`` or a name.

    Names are keys of :data:`SIGNAL_STEPS`; an empty list is the identity. Shape and dtype are kept.
    """

    def __init__(self, steps: Sequence[Any] = ()) -> None:
        super().__init__()
        steps = to_plain(steps)  # a ListConfig from Hydra: a plain list
        if isinstance(steps, str | Mapping) or not isinstance(steps, Sequence):
            raise TypeError(f"steps: expected a list of signal augmentation steps, got {type(steps).__name__}")
        self.steps = nn.ModuleList(self._make(s) for s in steps)

    @staticmethod
    def _make(step: Any) -> nn.Module:
        parsed = split_step(step)
        if parsed is None:
            raise TypeError(f"signal augmentation step: expected a name or a one-key mapping {{name: kwargs}}, "
                            f"got {step!r}")
        module: nn.Module = build_step(*parsed, SIGNAL_STEPS, "signal augmentation step")
        return module

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        for step in self.steps:
            x = step(x)
        return x

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The steps on a batch ``(N, *, L)``, every sample with its own draws, all from ``generator``.

        A step without its own ``apply_batch`` runs its ``forward`` on each sample under a seed drawn from
        ``generator`` (:func:`per_sample_batch`): the same draws, only slower."""
        self._check(x)
        for step in self.steps:
            batched = getattr(step, "apply_batch", None)
            x = batched(x, generator) if batched is not None else per_sample_batch(step, x, generator)
        return x

    @staticmethod
    def _check(x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"SignalPipeline input: expected a float tensor (*, L), got {type(x).__name__}")


def per_sample_batch(step: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator) -> Tensor:
    """``step`` (one sample's augmentation from torch's global RNG) on each sample of ``x (N, *, L)``, sample ``i``
    under the CPU generator seeded with ``s_i`` drawn from ``generator``; torch's global CPU RNG is restored after
    (the CUDA generators are never touched)."""
    seeds = torch.randint(0, 2**62, (x.shape[0],), generator=generator).tolist()
    state = torch.get_rng_state()
    try:
        out = []
        for seed, sample in zip(seeds, x):
            torch.default_generator.manual_seed(seed)
            out.append(step(sample))
    finally:
        torch.set_rng_state(state)
    return torch.stack(out) if out else x
