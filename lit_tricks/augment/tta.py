"""Test-time augmentation: average the class probabilities over flipped or circularly shifted copies of the input."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from lit_tricks.validation import ArgumentError, is_int

__all__ = ["TTA_MODES", "TTAFunction", "parse_tta", "tta_flip", "tta_shift"]

#: the values TrickModule's ``tta`` takes (besides false/none)
TTA_MODES = ("flip", "shift:<n>")


class TTAFunction(Protocol):
    """``(model, x, probabilities=True) -> mean over augmented copies`` of the softmax (or of the raw outputs)."""

    def __call__(self, model: Callable[[Tensor], Tensor], x: Tensor, *, probabilities: bool = True) -> Tensor: ...


def _mean(model: Callable[[Tensor], Tensor], copies: list[Tensor], probabilities: bool) -> Tensor:
    outs = [model(c) for c in copies]
    return torch.stack([o.softmax(-1) for o in outs] if probabilities else outs).mean(0)


@torch.no_grad()
def tta_flip(model: Callable[[Tensor], Tensor], x: Tensor, vertical: bool = False,
             probabilities: bool = True) -> Tensor:
    """``mean_k softmax(model(flip_k(x)))`` over identity and horizontal flip (and vertical flips if ``vertical``).

    ``x``: ``(N, C, H, W)``; ``model`` returns logits ``(N, K)``. Returns probabilities ``(N, K)``; with
    ``probabilities=False`` the mean of the raw outputs (regression).
    """
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    flips: list[tuple[int, ...]] = [(), (-1,)]
    if vertical:
        flips += [(-2,), (-2, -1)]
    return _mean(model, [torch.flip(x, dims) if dims else x for dims in flips], probabilities)


@torch.no_grad()
def tta_shift(model: Callable[[Tensor], Tensor], x: Tensor, max_shift: int = 4, probabilities: bool = True) -> Tensor:
    """``mean_k softmax(model(roll(x, k)))`` over the ``2 * max_shift + 1`` circular shifts ``k`` in
    ``[-max_shift, max_shift]`` of the last axis (a signal's time axis, e.g. MNIST-1D's ``(N, 1, 1, 40)``).

    The test-time counterpart of :class:`~lit_tricks.augment.signal.RandomShift1d` with ``mode="roll"``.
    ``max_shift=0`` is the model alone. ``probabilities=False``: the mean of the raw outputs (regression).
    """
    if not is_int(max_shift) or max_shift < 0:
        raise ArgumentError("max_shift", max_shift, "must be an int >= 0", owner="tta_shift")
    if x.ndim < 2:
        raise ValueError(f"x: expected a batch (N, ..., L), got shape {tuple(x.shape)}")
    return _mean(model, [torch.roll(x, k, dims=-1) for k in range(-max_shift, max_shift + 1)], probabilities)


def parse_tta(tta: Any) -> TTAFunction | None:
    """TrickModule's ``tta``: false/None -> None; true or ``"flip"`` -> :func:`tta_flip`; ``"shift:<n>"`` ->
    :func:`tta_shift` with ``max_shift=n`` (n >= 1). Anything else: one :class:`ArgumentError` naming ``tta``."""
    if tta is None or tta is False:
        return None
    if tta is True or tta == "flip":
        return tta_flip  # type: ignore[return-value]
    if isinstance(tta, str) and tta.startswith("shift:"):
        n = tta.split(":", 1)[1]
        if n.isdigit() and int(n) >= 1:
            return functools.partial(tta_shift, max_shift=int(n))  # type: ignore[return-value]
    raise ArgumentError("tta", tta, "must be false, true, 'flip' or 'shift:<n>' (circular shifts -n..n, n >= 1)")
