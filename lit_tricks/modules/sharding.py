"""Sharding any wrapped model with FSDP2 (``torch.distributed.fsdp.fully_shard``) under ``ModelParallelStrategy``.

Lightning's ``ModelParallelStrategy`` leaves the parallelization to the LightningModule's ``configure_model``; the
mixin :class:`ShardedModel` does it from one argument, ``shard``:

- ``"auto"`` (TrickModule's default): ``"blocks"`` under ``ModelParallelStrategy``, ``"none"`` under any other;
- ``"none"``: no sharding (any other strategy);
- ``"root"``: one FSDP unit, the whole LightningModule (every parameter gathered for the whole forward);
- ``"blocks"``: each child of the wrapped ``model`` that has parameters is its own unit (gathered just before it
  runs, freed after), then the LightningModule as the root unit: what the FSDP2 docs do per transformer block.

Each rank holds its rows of every parameter as a DTensor (data-parallel mesh dimension); the callbacks work on
those shards (:mod:`lit_tricks.functional.sharded`). ``trainer=fsdp_cpu`` (2 CPU ranks, gloo) and ``trainer=fsdp2``
(GPUs, NCCL) run this same path.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

from lit_tricks.validation import ArgumentError, check_choice

__all__ = ["SHARD_MODES", "ShardedModel", "shard_model"]

#: The values of ``shard`` and what each one wraps with ``fully_shard``.
SHARD_MODES = {
    "auto": "blocks under ModelParallelStrategy, none under any other strategy",
    "none": "nothing (not under ModelParallelStrategy)",
    "root": "the whole LightningModule as one unit",
    "blocks": "each child of the model with parameters, then the LightningModule",
}


def shard_model(root: nn.Module, blocks: nn.Module | None, mesh: Any, mode: str = "blocks") -> nn.Module:
    """``fully_shard`` the children of ``blocks`` that have parameters (``mode="blocks"``), then ``root``, over
    ``mesh`` (a 1-d device mesh); ``root`` is returned. A module already sharded is left as it is (Lightning calls
    ``configure_model`` again for ``trainer.test`` after ``fit``)."""
    check_choice("shard", mode, list(SHARD_MODES))
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if mode == "none" or isinstance(root, FSDPModule):  # "auto" reaches here as "blocks" (a mesh is given)
        return root
    if mode in ("blocks", "auto") and blocks is not None:
        for child in blocks.children():
            if next(child.parameters(), None) is not None and not isinstance(child, FSDPModule):
                fully_shard(child, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


class ShardedModel(pl.LightningModule):
    """``configure_model`` that shards ``self.model`` per ``self.hparams["shard"]`` under ``ModelParallelStrategy``
    (its data-parallel mesh dimension); a mode that does not fit the strategy fails in one line naming ``shard``."""

    model: nn.Module

    def configure_model(self) -> None:
        mode = str(self.hparams.get("shard", "auto"))
        mesh = self.device_mesh
        if mode == "auto":
            mode = "none" if mesh is None else "blocks"
        if mesh is None and mode != "none":
            raise ArgumentError("shard", mode, "needs trainer.strategy=ModelParallelStrategy (trainer=fsdp_cpu or "
                                "fsdp2); use shard=none with other strategies", "module")
        if mesh is not None and mode == "none":
            raise ArgumentError("shard", mode, "under ModelParallelStrategy the model must be sharded: set "
                                "module.shard=blocks (or root)", "module")
        if mesh is not None:
            shard_model(self, self.model, mesh["data_parallel"], mode)
