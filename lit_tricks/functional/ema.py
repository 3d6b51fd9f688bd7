"""Exponential moving average of weights: decay rules and in-place foreach updates (torch only).

The update is ``ema <- decay * ema + (1 - decay) * x``, written as one ``torch._foreach_lerp_`` per tensor
list (``lerp(ema, x, 1 - decay)``), so there is no per-tensor Python arithmetic and no host sync: the decay is
a Python float computed from integer counters kept on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lit_tricks.functional.sharded import locals_of
from lit_tricks.functional.wrappers import strip_wrapper_prefixes  # re-exported: its old home

__all__ = [
    "BUFFER_MODES",
    "copy_",
    "decay_from_half_life",
    "ema_update_",
    "named_ema_tensors",
    "optimizer_steps_since",
    "state_dict_aliases",
    "strip_wrapper_prefixes",
    "update_buffers_",
    "warmup_decay",
]

BUFFER_MODES = ("copy", "average")


def decay_from_half_life(half_life_steps: float, update_every_n_steps: int = 1) -> float:
    """Per-update decay whose weights halve every ``half_life_steps`` optimizer steps (Composer's ``half_life``).

    ``decay = 0.5 ** (update_every_n_steps / half_life_steps)``: after ``half_life_steps`` steps, i.e.
    ``half_life_steps / update_every_n_steps`` updates, a weight's contribution has fallen to one half.
    """
    if not (isinstance(half_life_steps, (int, float)) and math.isfinite(half_life_steps) and half_life_steps > 0):
        raise ValueError(f"`half_life_steps` must be a finite number > 0, got {half_life_steps!r}")
    if not (isinstance(update_every_n_steps, int) and update_every_n_steps >= 1):
        raise ValueError(f"`update_every_n_steps` must be an int >= 1, got {update_every_n_steps!r}")
    return float(0.5 ** (update_every_n_steps / half_life_steps))


def warmup_decay(decay: float, num_updates: int) -> float:
    """Warm-up decay ``min(decay, (1 + t) / (10 + t))`` with ``t`` the number of updates already done.

    From TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early averages forget the random init fast.
    """
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


@torch.no_grad()
def ema_update_(ema: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """In place ``ema[i] <- decay * ema[i] + (1 - decay) * current[i]`` for floating-point tensors.

    One ``torch._foreach_lerp_`` over the lists (``current`` is first copied to ``ema``'s device if they
    differ, e.g. for CPU offload). ``decay=0`` copies, ``decay=1`` leaves ``ema`` unchanged.
    """
    if len(ema) != len(current):
        raise ValueError(f"`ema` and `current` must have the same length, got {len(ema)} and {len(current)}")
    if not ema:
        return
    src = _on_devices_of(ema, current)
    if decay == 0.0:
        torch._foreach_copy_(list(ema), src)
    else:
        torch._foreach_lerp_(list(ema), src, 1.0 - float(decay))


@torch.no_grad()
def copy_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """In place ``dst[i].copy_(src[i])`` for all i, as one foreach copy (devices and dtypes may differ; DTensors
    placed alike copy their local shards)."""
    if len(dst) != len(src):
        raise ValueError(f"`dst` and `src` must have the same length, got {len(dst)} and {len(src)}")
    if dst:
        torch._foreach_copy_(locals_of(dst), locals_of(src))


@torch.no_grad()
def update_buffers_(ema: Sequence[Tensor], current: Sequence[Tensor], decay: float, mode: str = "copy") -> None:
    """Update EMA buffers: ``mode="copy"`` copies all; ``"average"`` averages floating ones and copies integer ones.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are always copied, since lerp is not defined for them;
    averaged ones are cast to the EMA's dtype first (a bf16 buffer into its fp32 shadow).
    """
    if mode not in BUFFER_MODES:
        raise ValueError(f"`mode` must be one of {BUFFER_MODES}, got {mode!r}")
    if mode == "copy":
        copy_(ema, current)
        return
    floats = [i for i, t in enumerate(ema) if t.is_floating_point() or t.is_complex()]
    ints = [i for i, t in enumerate(ema) if not (t.is_floating_point() or t.is_complex())]
    ema_update_([ema[i] for i in floats], [current[i].to(ema[i].dtype) for i in floats], decay)  # bf16 into fp32
    copy_([ema[i] for i in ints], [current[i] for i in ints])


def named_ema_tensors(module: nn.Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, Tensor]]]:
    """The tensors an EMA of ``module`` tracks: ``(floating parameters, buffers)`` as ``(name, tensor)`` lists.

    Names are ``state_dict`` keys. Non-floating parameters are returned with the buffers (they are copied).
    """
    params: list[tuple[str, Tensor]] = []
    buffers: list[tuple[str, Tensor]] = []
    for name, p in module.named_parameters():
        (params if p.is_floating_point() or p.is_complex() else buffers).append((name, p))
    buffers.extend(module.named_buffers())
    return params, buffers


def state_dict_aliases(module: nn.Module) -> dict[str, list[str]]:
    """Every ``state_dict`` key of each tensor shared under several names (tied weights, a module reachable twice):
    ``{name named_ema_tensors gives: [that name, the other names]}``; tensors with one name are left out.

    ``named_parameters``/``named_buffers`` give a shared tensor once, ``state_dict`` under every name, and loading
    such a ``state_dict`` copies each key in turn into the one tensor: the last key wins, so whoever writes values
    into a ``state_dict`` must write all the names.
    """
    names: dict[int, list[str]] = {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    return {group[0]: group for group in names.values() if len(group) > 1}


def _on_devices_of(dst: Sequence[Tensor], src: Sequence[Tensor]) -> list[Tensor]:
    """``src`` as a list, each moved to the device of the matching ``dst`` tensor where they differ."""
    return [s if s.device == d.device else s.to(d.device) for d, s in zip(dst, src)]


def optimizer_steps_since(last_step: int, global_step: int) -> int:
    """Optimizer steps taken since a callback last saw ``trainer.global_step == last_step``, read at batch end.

    0 when the step counter did not move (a batch that only accumulated gradients); otherwise at least 1, also
    when the counter went back (a new Trainer's count after its ``on_train_start`` set ``last_step``)."""
    return 0 if global_step == last_step else max(1, global_step - last_step)
