"""Shadows: the tensors a moving average of weights lives in, their dtype, and the one update kernel (torch only).

Shared by :class:`~lit_tricks.functional.ema_state.EMAState` (EMAWeights) and
:class:`~lit_tricks.functional.posthoc_ema.PowerEMAProfiles` (PostHocEMA): a shadow is created by
:func:`new_shadow` (placed like the weight: beside it, and for a DTensor parameter of a sharded model a DTensor
holding this rank's shard) and updated by :func:`average_` (one foreach lerp over the local shards, no
communication; the weights cast to the shadow's dtype, fp32 for bf16/fp16 weights by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_tricks.functional import sharded
from lit_tricks.functional.ema import ema_update_

__all__ = ["EMA_DTYPES", "average_", "new_shadow", "shadow_dtype"]

#: ``ema_dtype`` values: None (fp32 shadow for 16-bit floating weights, else the weight's dtype), ``"model"`` (the
#: weight's dtype), or a floating dtype name for every floating tensor.
EMA_DTYPES = (None, "model", "float32", "float64", "bfloat16", "float16")


def shadow_dtype(ema_dtype: str | None, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the EMA of a ``weight_dtype`` tensor under ``ema_dtype`` (non-floating tensors keep theirs).

    Default (None): float32 for 16-bit floating weights (bf16, fp16), whose resolution (8 and 11 significant bits)
    swallows an update ``(1 - d) * (w - ema)`` below ``2**-8 * |ema|``: at ``d = 0.999`` a bf16 EMA never moves.
    """
    if not weight_dtype.is_floating_point or ema_dtype == "model":
        return weight_dtype
    if ema_dtype is None:
        return torch.float32 if torch.finfo(weight_dtype).bits < 32 else weight_dtype
    return getattr(torch, ema_dtype)  # type: ignore[no-any-return]


def new_shadow(model_tensor: Tensor, source: Tensor, dtype: torch.dtype | None = None,
               device: torch.device | None = None) -> Tensor:
    """A new shadow holding ``source`` (a copy), typed ``dtype`` (default: :func:`shadow_dtype` ``(None, ...)``)
    and placed for ``model_tensor``: on ``device`` (default: the weight's), or, for a DTensor ``model_tensor``, a
    DTensor placed like it holding this rank's chunk of ``source`` (a full tensor loaded from a checkpoint, or a
    DTensor); ``device`` must be None then."""
    dtype = dtype if dtype is not None else shadow_dtype(None, model_tensor.dtype)
    if sharded.is_dtensor(model_tensor):
        if device is not None:
            raise ValueError(f"device={str(device)!r}: a shadow of a sharded (DTensor) weight lives beside its shard")
        return sharded.shard_like(source, model_tensor, dtype)
    return source.detach().to(device=device or model_tensor.device, dtype=dtype, copy=True)


@torch.no_grad()
def average_(shadows: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """``shadow <- decay * shadow + (1 - decay) * current``, on local shards (each rank averages its own part of a
    DTensor, no communication), ``current`` cast to the shadow's dtype (a bf16 weight into an fp32 shadow)."""
    local = sharded.locals_of(shadows)
    weights = [w if w.dtype == e.dtype else w.to(e.dtype) for e, w in zip(local, sharded.locals_of(current))]
    ema_update_(local, weights, decay)
