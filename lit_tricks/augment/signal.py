"""Per-sample augmentation of 1-D signals (MNIST-1D): random shift (zero/edge padding or roll), shear (a random
linear ramp), Gaussian noise, amplitude scale. Works on any float tensor ``(*, L)``: the last dimension is the
signal's time axis.

Randomness comes from torch's global RNG, so the DataModule's per-sample seed reproduces it (as for images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_tricks.augment.steps import build_step, split_step
from lit_tricks.hydra_utils import to_plain

__all__ = ["SIGNAL_STEPS", "AmplitudeScale", "RandomShear1d", "RandomShift1d", "SignalNoise", "SignalPipeline"]

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
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"SignalPipeline input: expected a float tensor (*, L), got {type(x).__name__}")
        for step in self.steps:
            x = step(x)
        return x
