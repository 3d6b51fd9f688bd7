"""Gradient clipping kernels: global norm, value, adaptive (unit-wise) and percentile (AutoClip).

All functions work in place on ``p.grad`` with ``torch._foreach_*`` kernels grouped by (device, dtype), return tensors
(never Python numbers) and so never synchronise with the host: a caller that wants a float for logging asks for it.

Sharded gradients (DTensor shards of FSDP2 / ``ModelParallelStrategy``): norms are global (squared local norms
all-reduced over the ranks holding the other shards, :func:`lit_tricks.functional.sharded.global_norm`), so the
clip factor is the one of the gathered gradients on every rank; scaling and value clamping act on the local shards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from lit_tricks.functional.sharded import global_norm, is_dtensor, local, locals_of, norm_dtype, reduce_over_shards_

__all__ = [
    "CLIP_MODES",
    "adaptive_clip_grad_",
    "autoclip_threshold",
    "clip_grad_norm_",
    "clip_grad_value_",
    "grad_norm",
    "grads_of",
    "push_history_",
    "unitwise_norm",
]

#: The modes of :class:`lit_tricks.callbacks.clipping.GradientClipping` and what each one clips.
CLIP_MODES: dict[str, str] = {
    "norm": "rescale all gradients so that their global p-norm is at most max_norm",
    "value": "clamp every gradient entry to [-max_value, max_value]",
    "agc": "adaptive gradient clipping: per output unit, ||g|| <= agc_factor * max(||w||, eps) (Brock et al. 2021)",
    "auto": "AutoClip: clip the global norm at the p-th percentile of the grad-norm history (Seetharaman et al. 2020)",
}


def grads_of(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """The ``.grad`` tensors of ``parameters`` that have one (a single tensor is accepted too)."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad for p in params if p.grad is not None]


def _grouped(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.device, t.dtype)].append(t)
    return groups


def _one_group(tensors: list[Tensor]) -> bool:
    """Whether ``tensors`` (not empty) are plain tensors (no DTensor or other subclass) of one device and dtype."""
    device, dtype = tensors[0].device, tensors[0].dtype
    return all(type(t) is Tensor and t.dtype == dtype and t.device == device for t in tensors)


def _norm_of_norms(norms: list[Tensor] | tuple[Tensor, ...], norm_type: float) -> Tensor:
    dtype = norm_dtype(norms)
    if any(n.dtype != dtype for n in norms):
        norms = [n.to(dtype) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def grad_norm(grads: list[Tensor], norm_type: float = 2.0) -> Tensor:
    """Global ``norm_type``-norm of all tensors in ``grads`` as a 0-d float32 tensor (float64 when any of them is
    float64, as torch's; 0 when ``grads`` is empty).

    Per-tensor norms come from one ``torch._foreach_norm`` per (device, dtype) group, then the norm of those norms
    (the same reduction as ``torch.nn.utils.get_total_norm``); over DTensor shards, the global norm.
    """
    if not grads:
        return torch.zeros(())
    return _grad_norm(grads, float(norm_type), _one_group(grads))


def _grad_norm(grads: list[Tensor], norm_type: float, one_group: bool) -> Tensor:
    """:func:`grad_norm` of ``grads`` (not empty); ``one_group``: :func:`_one_group` of them, known to the caller."""
    if one_group:  # the common case: one foreach kernel, no grouping
        return _norm_of_norms(torch._foreach_norm(grads, norm_type), norm_type)
    if any(is_dtensor(g) for g in grads):
        return global_norm(grads, norm_type)
    first_device = grads[0].device
    norms: list[Tensor] = []
    for (device, _), group in _grouped(grads).items():
        per_tensor = torch._foreach_norm(group, norm_type)
        norms.extend(n.to(first_device) if device != first_device else n for n in per_tensor)
    return _norm_of_norms(norms, norm_type)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float | Tensor,
    norm_type: float = 2.0,
    eps: float = 1e-6,
    total_norm: Tensor | None = None,
) -> Tensor:
    """Scale gradients in place so that their global norm is at most ``max_norm``; returns the norm before clipping.

    ``g <- g * min(1, max_norm / (||g|| + eps))``, as ``torch.nn.utils.clip_grad_norm_(foreach=True)``. ``max_norm``
    may be a tensor (AutoClip's percentile), so the whole computation stays on the device; pass ``total_norm`` when
    it is already known (from :func:`grad_norm`) to skip computing it again.
    """
    grads = grads_of(parameters)
    if not grads:
        return grad_norm(grads, norm_type) if total_norm is None else total_norm
    one_group = _one_group(grads)
    total = _grad_norm(grads, float(norm_type), one_group) if total_norm is None else total_norm
    coef = torch.clamp(max_norm / (total + eps), max=1.0)
    if one_group and coef.device == grads[0].device:
        torch._foreach_mul_(grads, coef)
        return total
    for (device, _), group in _grouped(locals_of(grads)).items():
        torch._foreach_mul_(group, coef.to(device))
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], max_value: float) -> None:
    """Clamp every gradient entry to ``[-max_value, max_value]`` in place (``torch.nn.utils.clip_grad_value_``)."""
    if max_value <= 0:
        raise ValueError(f"max_value must be > 0, got {max_value!r}")
    for group in _grouped(locals_of(grads_of(parameters))).values():
        torch._foreach_clamp_min_(group, -max_value)
        torch._foreach_clamp_max_(group, max_value)


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit: over the whole tensor for scalars/vectors, over all dims but the first otherwise."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_grad_(
    parameters: Tensor | Iterable[Tensor], clip_factor: float = 0.01, eps: float = 1e-3
) -> Tensor:
    """Adaptive gradient clipping (AGC), unit-wise, in place; returns a 0-d bool tensor: was any unit clipped.

    For each output unit i of each weight W: if ``||G_i|| > clip_factor * max(||W_i||, eps)`` then
    ``G_i <- G_i * clip_factor * max(||W_i||, eps) / ||G_i||`` (Brock et al. 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization", eq. 3; same rule as ``timm.utils.adaptive_clip_grad``). A DTensor shard's
    unit norms are completed over the ranks holding the unit's other entries, and the flag is true on every rank.
    """
    if clip_factor <= 0:
        raise ValueError(f"clip_factor (agc_factor) must be > 0, got {clip_factor!r}")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    flags: list[Tensor] = []
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            g = local(p.grad)
            max_norm = _unitwise_norm(p.detach()).clamp_min_(eps).mul_(clip_factor)
            g_norm = _unitwise_norm(p.grad)
            scale = (max_norm / g_norm.clamp_min(1e-6)).clamp_max_(1.0)
            clipped = reduce_over_shards_((scale < 1.0).any().float(), p, "max")  # any unit anywhere
            flags.append(clipped.to(flags[0].device if flags else scale.device))
            g.mul_(scale.to(g.dtype))
    return torch.stack(flags).amax() > 0 if flags else torch.zeros((), dtype=torch.bool)


def _unitwise_norm(x: Tensor) -> Tensor:
    """:func:`unitwise_norm` of ``x``'s local rows; for a DTensor the squared sums are all-reduced over the ranks
    holding the same units' other entries (all of a vector's, the other columns of a matrix's rows)."""
    if not is_dtensor(x):
        return unitwise_norm(x)
    part = local(x).to(norm_dtype((x,)))  # float32 for 16-bit, float64 kept
    dims = tuple(range(1, part.ndim)) if x.ndim > 1 else tuple(range(part.ndim))
    squares = part.square().sum(dim=dims, keepdim=x.ndim > 1)
    reduced = tuple(range(1, x.ndim)) if x.ndim > 1 else (0,)  # the tensor dims a unit spans
    return reduce_over_shards_(squares, x, "sum", reduced).sqrt().to(x.dtype)


def push_history_(history: Tensor, count: int, value: Tensor) -> None:
    """Write ``value`` into the ring buffer ``history`` at slot ``count % len(history)`` (no host sync).

    A non-finite value (an overflowed AMP step, which the GradScaler skips) is stored as NaN, which
    :func:`autoclip_threshold` ignores."""
    nan = float("nan")
    value = value.detach().to(device=history.device, dtype=history.dtype).reshape(())  # a record: no graph
    torch.nan_to_num(value, nan=nan, posinf=nan, neginf=nan, out=history.select(0, count % history.numel()))


def autoclip_threshold(history: Tensor, count: int, percentile: float) -> Tensor:
    """The ``percentile``-th percentile (linear interpolation, as ``numpy.percentile``) of the filled part of the ring
    buffer ``history`` holding ``count`` values pushed so far, NaNs ignored (AutoClip, Seetharaman et al. 2020)."""
    if count <= 0:
        raise ValueError(f"count must be > 0 (push a value first), got {count!r}")
    filled = history[: min(count, history.numel())]
    return torch.nanquantile(filled, percentile / 100.0)
