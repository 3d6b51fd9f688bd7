"""Per-sample augmentation pipelines built from a YAML list of torchvision.transforms.v2 steps.

Input and output: one float image tensor ``(C, H, W)`` in [0, 1] (the DataModule applies it per sample, in the
training split only, before the preprocessing fit on un-augmented training data). Randomness comes from torch's
global RNG, so a seed (or the DataModule's per-sample seed) reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from lit_tricks.augment.steps import build_step, split_step
from lit_tricks.hydra_utils import to_plain

__all__ = ["STEPS", "Pipeline", "RandomCropSame", "RandomJPEG", "make_step"]


class RandomJPEG(nn.Module):
    """JPEG compression artifacts on a float image: float [0, 1] -> uint8 -> ``v2.JPEG(quality)`` -> float.

    ``quality``: an int or a ``[min, max]`` range drawn per call (torchvision's JPEG needs uint8 input).
    ``p``: probability of applying it.
    """

    def __init__(self, quality: int | Sequence[int] = (50, 95), p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        q = [int(quality)] * 2 if isinstance(quality, int | float) else [int(v) for v in quality]
        self.jpeg, self.p = v2.JPEG(q), float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return x
        u8 = v2.functional.to_dtype(x, torch.uint8, scale=True)
        return v2.functional.to_dtype(self.jpeg(u8), x.dtype, scale=True)  # type: ignore[no-any-return]


class RandomCropSame(nn.Module):
    """Pad by ``padding`` pixels on every side, then crop back to the input size at a random offset."""

    def __init__(self, padding: int = 4, padding_mode: str = "constant", fill: float = 0.0) -> None:
        super().__init__()
        if not (isinstance(padding, int) and padding >= 0):
            raise ValueError(f"padding: expected an int >= 0, got {padding!r}")
        self.padding, self.padding_mode, self.fill = padding, padding_mode, fill

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            return x
        h, w = x.shape[-2:]
        padded = v2.functional.pad(x, [self.padding], fill=self.fill, padding_mode=self.padding_mode)
        i, j = (int(v) for v in torch.randint(0, 2 * self.padding + 1, (2,)))
        return padded[..., i : i + h, j : j + w]  # type: ignore[no-any-return]


def _random_crop(size: int | Sequence[int] | None = None, padding: int | None = None, **kwargs: Any) -> nn.Module:
    """``v2.RandomCrop(size, padding, ...)``; ``size=None`` keeps the input size (pad, then crop back)."""
    if size is None:
        return RandomCropSame(padding if padding is not None else 0, **kwargs)
    return v2.RandomCrop(size, padding=padding, **kwargs)


def _gaussian_noise(mean: float = 0.0, sigma: float = 0.1, clip: bool = True) -> nn.Module:
    """``x + N(mean, sigma^2)``; ``clip`` keeps [0, 1], right for raw images (preprocessing comes later)."""
    return v2.GaussianNoise(mean=mean, sigma=sigma, clip=clip)


# Registry: step name -> factory. Lengths are pixels, angles degrees, probabilities p.
STEPS: dict[str, Callable[..., nn.Module]] = {
    "hflip": v2.RandomHorizontalFlip,
    "vflip": v2.RandomVerticalFlip,
    "random_crop": _random_crop,
    "random_resized_crop": v2.RandomResizedCrop,
    "rotation": v2.RandomRotation,
    "affine": v2.RandomAffine,
    "color_jitter": v2.ColorJitter,
    "grayscale": v2.RandomGrayscale,
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": v2.GaussianBlur,
    "jpeg": RandomJPEG,
    "random_erasing": v2.RandomErasing,
}


def _lists_to_tuples(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def make_step(step: Any) -> Callable[[Tensor], Tensor]:
    """One pipeline step from ``"hflip"``, ``{"rotation": {"degrees": 10}}``, ``{"name": "rotation", ...}`` or a
    callable (e.g. a transform Hydra built from ``_target_: torchvision.transforms.v2.RandomRotation``)."""
    step = to_plain(step)
    parsed = split_step(step)
    if parsed is None:
        if callable(step):
            return step  # type: ignore[no-any-return]
        raise TypeError(f"augmentation step: expected a name, a one-key mapping {{name: kwargs}} or a callable, "
                        f"got {step!r}")
    step_fn: Callable[[Tensor], Tensor] = build_step(*parsed, STEPS, "augmentation step", convert=_lists_to_tuples)
    return step_fn


class Pipeline(nn.Module):
    """Apply ``steps`` in order to one float image ``(C, H, W)`` in [0, 1]; the output keeps shape and dtype.

    ``steps``: see :func:`make_step`; names are keys of ``STEPS``. An empty list is the identity.
    """

    def __init__(self, steps: Sequence[Any] = ()) -> None:
        super().__init__()
        steps = to_plain(steps)
        if isinstance(steps, str | Mapping) or not isinstance(steps, Sequence):
            raise TypeError(f"steps: expected a list of augmentation steps, got {type(steps).__name__}")
        self.steps = nn.ModuleList()
        self._plain_steps: list[Callable[[Tensor], Tensor]] = []
        for s in steps:
            built = make_step(s)
            if isinstance(built, nn.Module):
                self.steps.append(built)
            self._plain_steps.append(built)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 3:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"Pipeline input: expected one float image tensor (C, H, W) in [0, 1], got {got}")
        out = x
        for step in self._plain_steps:
            out = step(out)
        return out.as_subclass(Tensor).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{len(self._plain_steps)} steps"
