"""Tensors that may be DTensor shards (FSDP2 ``fully_shard``, Lightning's ``ModelParallelStrategy``): local views,
gathering into full tensors, re-sharding full tensors, and reductions over the shards (torch only).

Under FSDP2 every parameter (and its gradient) is a ``torch.distributed.tensor.DTensor`` holding this rank's rows;
buffers stay plain, replicated tensors. The callbacks work on the local shards (:func:`local`, no communication) and
communicate only what they must: a global norm (:func:`global_norm`), a gathered copy when a file is written
(:func:`full_state_dict`). Plain tensors pass through every function unchanged, so one code path serves both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor
try:  # torch built without distributed support has no DTensor: nothing is ever sharded then
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor as _DTensor
    from torch.distributed.tensor import distribute_tensor
except ImportError:  # pragma: no cover - depends on the torch build
    _DTensor = None  # type: ignore[assignment,misc]

__all__ = [
    "full", "full_state_dict", "global_norm", "has_dtensors", "is_dtensor", "load_full_state_dict_", "local",
    "local_chunk", "locals_of", "norm_dtype", "reduce_over_shards_", "shard_like",
]


def is_dtensor(t: Any) -> TypeGuard[DTensor]:
    """Whether ``t`` is a DTensor (a shard of a tensor spread over ranks)."""
    return _DTensor is not None and isinstance(t, _DTensor)


def full(t: Tensor) -> Tensor:
    """The whole tensor: a DTensor gathered (a collective every rank holding a shard must enter), else ``t``."""
    return t.full_tensor() if is_dtensor(t) else t


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a DTensor (a view: writing into it writes into ``t``), else ``t``.
    """
    return t.to_local() if is_dtensor(t) else t


def locals_of(tensors: Iterable[Tensor]) -> list[Tensor]:
    """:func:`local` of every tensor."""
    return [local(t) for t in tensors]


def has_dtensors(module: nn.Module | None) -> bool:
    """Whether any parameter of ``module`` is a DTensor (the module is sharded); False for None."""
    return module is not None and any(is_dtensor(p) for p in module.parameters())


def local_chunk(full: Tensor, like: Tensor) -> Tensor:
    """The part of the full tensor ``full`` that ``like`` (a DTensor) holds on this rank; no communication.

    Every rank must hold the same ``full`` (a checkpoint every rank loaded); the chunking is DTensor's own, the one
    FSDP2 uses, so uneven shards (5 rows over 2 ranks: 3 + 2) come out as the model's.
    """
    if not is_dtensor(like):
        return full
    return distribute_tensor(full.detach(), like.device_mesh, like.placements, src_data_rank=None).to_local()


def shard_like(source: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new DTensor placed as ``like`` (a clone of its layout and global shape: ``DTensor.from_local`` infers wrong
    shapes for uneven shards) holding ``source``: a DTensor placed alike, or the full tensor."""
    out = like.detach().to(dtype=dtype or like.dtype, copy=True)
    if source is not like:
        local(out).copy_(local(source) if is_dtensor(source) else local_chunk(source, like))
    return out


def _shard_dims(t: Any, reduced_dims: Sequence[int] | None = None) -> list[int]:
    """The mesh dimensions over which ``t`` is split along a tensor dim in ``reduced_dims`` (None: any dim)."""
    return [i for i, p in enumerate(t.placements)
            if p.is_shard() and (reduced_dims is None or p.dim in reduced_dims)]  # type: ignore[attr-defined]


def reduce_over_shards_(value: Tensor, like: Tensor, op: str = "sum", reduced_dims: Sequence[int] | None = None
                        ) -> Tensor:
    """All-reduce ``value`` (a plain tensor computed from ``like``'s local shard) over the ranks that hold the other
    shards of ``like`` along the tensor dims ``reduced_dims`` (None: all), in place; ``op``: ``sum`` or ``max``.
    A plain ``like`` leaves ``value`` as it is."""
    if not is_dtensor(like):
        return value
    reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
    for mesh_dim in _shard_dims(like, reduced_dims):
        dist.all_reduce(value, op=reduce_op, group=like.device_mesh.get_group(mesh_dim))
    return value


def global_norm(tensors: Sequence[Tensor], norm_type: float = 2.0) -> Tensor:
    """The ``norm_type``-norm of all of ``tensors`` taken whole, when some are DTensor shards: a 0-d float32 tensor,
    float64 when any of them is float64 (:func:`norm_dtype`, as :func:`lit_tricks.functional.clip.grad_norm`).

    Each rank sums ``|x|^p`` over its local shards (``max |x|`` for ``p = inf``), the sums are all-reduced over the
    ranks holding the other shards (one collective per mesh and layout), then the ``1/p``-th power is taken: the
    norm ``torch.nn.utils.clip_grad_norm_`` returns on the gathered tensors, known on every rank.
    """
    p = float(norm_type)
    groups: dict[tuple[int, tuple[int, ...]], tuple[Tensor, list[Tensor]]] = {}
    plain: list[Tensor] = []
    for t in tensors:
        if is_dtensor(t):
            key = (id(t.device_mesh), tuple(_shard_dims(t)))
            groups.setdefault(key, (t, []))[1].append(t.to_local())
        else:
            plain.append(t)
    dtype = norm_dtype(tensors)  # from the global dtypes: the same on every rank, so the all-reduces agree
    parts = [_power_sum(plain, p, dtype)] if plain else []
    for like, shards in groups.values():
        parts.append(reduce_over_shards_(_power_sum(shards, p, dtype), like, "max" if p == float("inf") else "sum"))
    if not parts:
        return torch.zeros(())
    device = parts[0].device
    stacked = torch.stack([v.to(device) for v in parts])
    return stacked.max() if p == float("inf") else stacked.sum().pow(1.0 / p)


def norm_dtype(tensors: Iterable[Tensor]) -> torch.dtype:
    """The dtype a norm of ``tensors`` is computed and returned in: float64 when any of them is float64, else
    float32 (16-bit tensors too: their norms are accumulated in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _power_sum(tensors: Sequence[Tensor], p: float, dtype: torch.dtype) -> Tensor:
    """``sum |x|^p`` over all entries of ``tensors`` (``max |x|`` for ``p = inf``) in ``dtype``, 0 when empty, on
    the tensors' device (an empty shard's too: the all-reduce needs it there)."""
    device = tensors[0].device
    tensors = [t for t in tensors if t.numel()]  # a rank's shard may be empty (1 row over 2 ranks)
    if not tensors:
        return torch.zeros((), dtype=dtype, device=device)
    norms = torch.stack([n.to(device=device, dtype=dtype) for n in torch._foreach_norm(tensors, p)])
    return norms.max() if p == float("inf") else norms.pow(p).sum()


@torch.no_grad()
def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` as full CPU tensors on every rank (DTensors gathered: a collective every rank of the
    mesh must enter); a plain module's tensors are copied to the CPU."""
    return {k: full(v).detach().to("cpu", copy=True)
            for k, v in module.state_dict().items()}


@torch.no_grad()
def load_full_state_dict_(module: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load full tensors (:func:`full_state_dict`'s output) into ``module``, each rank copying its own chunk into its
    shards (no communication); a plain module loads them with ``load_state_dict(strict=True)``."""
    if not has_dtensors(module):
        module.load_state_dict(dict(state), strict=True)
        return
    targets = module.state_dict()
    missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or unexpected:
        raise RuntimeError(f"state dict does not fit the module: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, target in targets.items():
        local(target).copy_(local_chunk(state[key].to(target.device), target))
