"""What BackboneFinetuning asks of TrickModule: its backbone, and optimizer groups for unfrozen parameters."""

from __future__ import annotations

from typing import Any

from torch import nn

from lit_tricks.models.heads import find_head

__all__ = ["backbone_layers", "finetune_groups"]


def backbone_layers(model: nn.Module) -> nn.ModuleList:
    """Every layer of ``model`` but its head (:func:`~lit_tricks.models.heads.find_head`): a ``ModuleList`` of the
    leaf layers, plus holders of the parameters that a parent module owns itself (e.g. a ViT's class token)."""
    head = find_head(model)
    if head is None:
        raise AttributeError("backbone: the model has no nn.Linear head (lit_tricks.models.heads.find_head)")
    layers: list[nn.Module] = []
    for module in model.modules():
        if module is head[2]:
            continue
        if not list(module.children()):
            layers.append(module)
        elif module._parameters:
            holder = nn.Module()
            for name, p in module.named_parameters(recurse=False):
                holder.register_parameter(name, p)
            layers.append(holder)
    return nn.ModuleList(layers)


def finetune_groups(params: list[nn.Parameter], decayed: set[int], weight_decay: float,
                    native: bool) -> list[dict[str, Any]]:
    """Optimizer groups for ``params`` under the weight-decay rule: the decayed tensors (ids in ``decayed``) and the
    rest; the optimizer's own ``weight_decay`` is set only where it applies the decay itself (``native``)."""
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay if native else 0.0,
         "lit_tricks_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0, "lit_tricks_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
