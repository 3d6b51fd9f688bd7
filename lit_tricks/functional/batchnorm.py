"""BatchNorm recalibration: recompute running statistics from batches (the one implementation; torch only).

Every caller (EMAWeights before evaluating the EMA, CheckpointEnsemble's weight average, the surgery helper
:func:`lit_tricks.modules.surgery.recalibrate_bn`) uses :func:`recalibrate_bn_` and its one batch-unpacking rule,
:func:`batch_inputs`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_inputs", "batchnorm_layers", "recalibrate_bn_"]


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: its first element when it is a tuple/list ``(x, y, ...)``, else the batch itself.

    The rule of ``torch.optim.swa_utils.update_bn``.
    """
    return batch[0] if isinstance(batch, list | tuple) else batch


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
