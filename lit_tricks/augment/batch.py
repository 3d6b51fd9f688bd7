"""Batch-level MixUp / CutMix (torchvision v2) for TrickModule's ``batch_augment``: ``(x, y) -> (x, y_soft)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["MIX_KINDS", "BatchMix", "batch_mix"]

MIX_KINDS = ("mixup", "cutmix", "both")


class BatchMix:
    """Mix a training batch: MixUp (Zhang et al., 2018), CutMix (Yun et al., 2019) or one of them at random.

    ``x``: ``(N, C, H, W)`` float; ``y``: ``(N,)`` class indices -> returns ``x`` mixed and ``(N, num_classes)`` soft
    targets (``lam * onehot(y) + (1 - lam) * onehot(y[perm])``, ``lam ~ Beta(alpha, alpha)``; for CutMix lam is the
    kept area). ``p``: probability of mixing a batch (unmixed batches get one-hot targets, same dtype). The partner of
    sample i is sample i - 1 (torchvision's ``roll(1, 0)``). On a 1-D signal (``H == 1``, where torchvision's square
    box would have height 0 and CutMix would do nothing) CutMix pastes a segment of length ``(1 - lam) W``.
    """

    def __init__(self, kind: str = "mixup", alpha: float = 0.2, num_classes: int = 10, p: float = 1.0,
                 cutmix_alpha: float | None = None) -> None:
        if kind not in MIX_KINDS:
            raise ValueError(f"kind: expected one of {list(MIX_KINDS)}, got {kind!r}")
        if not (isinstance(alpha, int | float) and alpha > 0):
            raise ValueError(f"alpha: expected a number > 0, got {alpha!r}")
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes: expected an int >= 2 (MixUp/CutMix need it), got {num_classes!r}")
        if not (isinstance(p, int | float) and 0 <= p <= 1):
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.kind, self.alpha, self.num_classes, self.p = kind, float(alpha), num_classes, float(p)
        calpha = float(cutmix_alpha) if cutmix_alpha is not None else float(alpha)
        mixup = v2.MixUp(alpha=self.alpha, num_classes=num_classes)
        cutmix = v2.CutMix(alpha=calpha, num_classes=num_classes)
        self.transforms = {"mixup": mixup, "cutmix": cutmix}
        self._cutmix = torch.distributions.Beta(torch.tensor([calpha]), torch.tensor([calpha]))

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or not x.is_floating_point():
            raise TypeError(f"BatchMix: x must be a float batch (N, C, H, W), got {tuple(x.shape)} {x.dtype}")
        if y.ndim != 1 or y.is_floating_point():
            raise TypeError(f"BatchMix: y must be (N,) class indices, got {tuple(y.shape)} {y.dtype}")
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return x, F.one_hot(y, self.num_classes).to(x.dtype)
        kind = self.kind if self.kind != "both" else ("mixup" if float(torch.rand(())) < 0.5 else "cutmix")
        if kind == "cutmix" and x.shape[-2] == 1:
            return self._cutmix_signal(x, y)
        xm, ym = self.transforms[kind](x, y)
        return xm.as_subclass(Tensor), ym.to(x.dtype)

    def _cutmix_signal(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """CutMix on ``(N, C, 1, W)``: a segment of length ``2 int((1 - lam) W / 2)`` around a uniform centre, clipped
        at the ends, comes from the partner; the target weight is the kept share, ``1 - length / W``."""
        lam = float(self._cutmix.sample(()))
        width = x.shape[-1]
        centre, half = int(torch.randint(width, (1,))), int(0.5 * (1.0 - lam) * width)
        x1, x2 = max(centre - half, 0), min(centre + half, width)
        out = x.clone()
        out[..., x1:x2] = x.roll(1, 0)[..., x1:x2]
        kept = 1.0 - (x2 - x1) / width
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        return out, kept * onehot + (1.0 - kept) * onehot.roll(1, 0)

    def __repr__(self) -> str:
        return f"BatchMix(kind={self.kind!r}, alpha={self.alpha}, num_classes={self.num_classes}, p={self.p})"


def batch_mix(kind: str = "mixup", alpha: float = 0.2, num_classes: int = 10, p: float = 1.0,
              cutmix_alpha: float | None = None) -> BatchMix:
    """A ``(x, y) -> (x, y_soft)`` callable for ``TrickModule(batch_augment=...)``; see :class:`BatchMix`."""
    return BatchMix(kind, alpha, num_classes, p, cutmix_alpha)
