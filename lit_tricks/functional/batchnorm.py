"""BatchNorm recalibration: recompute running statistics from batches (the one implementation; torch only).

Every caller (EMAWeights before evaluating the EMA, CheckpointEnsemble's weight average, the surgery helper
:func:`lit_tricks.modules.surgery.recalibrate_bn`) uses :func:`recalibrate_bn_` and its one batch-unpacking rule,
:func:`batch_inputs`. A recalibration during training draws its batches through :func:`sampled_batches`, never from
the training loader itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

__all__ = ["batch_inputs", "batchnorm_layers", "recalibrate_bn_", "sampled_batches"]


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: its first element when it is a tuple/list ``(x, y, ...)``, else the batch itself.

    The rule of ``torch.optim.swa_utils.update_bn``.
    """
    return batch[0] if isinstance(batch, list | tuple) else batch


def sampled_batches(loader: Any, seed: int) -> Iterable[Any]:
    """Batches of ``loader``'s dataset in an order of their own: a new ``DataLoader`` (same dataset, batch size,
    ``drop_last``, collate function and workers) over a permutation drawn from ``torch.Generator().manual_seed(seed)``.

    Iterating it moves nothing of ``loader``: not its iterator, whose data position a ``StatefulDataLoader`` saves in
    every checkpoint (iterating ``loader`` itself would replace it), not its sampler or batch sampler, not torch's
    global RNG (the workers' base seed comes from the same generator). So a recalibration in the middle of training
    leaves the training data position and the RNG where an exact resume expects them, and the same ``seed`` gives the
    same batches: under DDP every rank draws the same batches from the whole dataset (not its own shard), so the
    recalibrated statistics agree across ranks as the weights do. The batch size is ``loader.batch_size`` or its
    batch sampler's ``batch_size`` (a batch sampler without one is refused; a loader without automatic batching,
    whose samples are batches, stays so). An iterable dataset is read from a fresh loader of its own (no
    permutation). A loader that is not a ``DataLoader`` but can stand for one (``as_dataloader()``, e.g.
    :class:`~lit_tricks.data.tensor_loader.TensorLoader`) is read through that ``DataLoader``; anything else is
    returned as it is.
    """
    if not isinstance(loader, DataLoader):
        as_dataloader = getattr(loader, "as_dataloader", None)
        if as_dataloader is None:
            return loader
        loader = as_dataloader()
    batcher = loader.batch_sampler
    size = loader.batch_size or getattr(batcher, "batch_size", None)
    if batcher is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"sampled_batches: the train loader's batch sampler {type(batcher).__name__} has no "
                         "batch_size (variable-size batches?): recalibrating BatchNorm during training needs one "
                         "(or set recalibrate_bn_batches=0)")
    drop_last = bool(loader.drop_last or getattr(batcher, "drop_last", False))
    generator = torch.Generator().manual_seed(int(seed))
    common: dict[str, Any] = {
        "batch_size": size, "drop_last": drop_last, "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers, "pin_memory": loader.pin_memory, "worker_init_fn": loader.worker_init_fn,
        "generator": generator,
        "multiprocessing_context": loader.multiprocessing_context if loader.num_workers else None,
    }
    if isinstance(loader.dataset, IterableDataset):
        return DataLoader(loader.dataset, **common)
    sampler = RandomSampler(loader.dataset, generator=generator)  # type: ignore[arg-type]  # a map-style dataset
    return DataLoader(loader.dataset, sampler=sampler, **common)


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics (what :func:`recalibrate_bn_` recomputes)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn_(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    *,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Recompute BatchNorm running statistics of ``model`` from ``batches`` (cumulative average); returns #batches.

    Running stats are reset and each BN's ``momentum`` set to ``None`` (equal-weight average over the batches) as in
    ``torch.optim.swa_utils.update_bn`` (Izmailov et al. 2018). ``forward(model, batch)`` runs one batch; by default
    ``model(batch_inputs(batch))``, moved to ``device`` when given. ``num_batches`` (None: all) caps the batches
    used. The training mode and momenta are restored, also after an error.
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    if num_batches is not None:
        batches = itertools.islice(batches, num_batches)
    momenta = {bn: bn.momentum for bn in bns}
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    n = 0
    try:
        for batch in batches:
            if forward is not None:
                forward(model, batch)
            else:
                x = batch_inputs(batch)
                model(x.to(device) if device is not None else x)
            n += 1
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
        model.train(was_training)
    return n
