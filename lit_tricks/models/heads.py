"""Finding a model's classifier head (the layer that model surgery and the torchvision adapter replace)."""

from __future__ import annotations

from torch import nn

__all__ = ["find_head"]


def find_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear] | None:
    """(parent, attribute, layer) of the classifier head: the last ``nn.Linear`` registered in ``model``."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name:
            last = name
    if last is None:
        return None
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, attr, parent.get_submodule(attr)  # type: ignore[return-value]
