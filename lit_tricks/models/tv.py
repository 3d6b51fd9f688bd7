"""Any torchvision classification model by name, adapted to the data's channels, classes and image size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lit_tricks.models.heads import find_head

__all__ = ["torchvision_model"]


def _replace_first_conv(model: nn.Module, in_channels: int, small_stem: bool) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels and not small_stem:
                    return
                kernel: Any = (3, 3) if small_stem else child.kernel_size
                stride: Any = (1, 1) if small_stem else child.stride
                padding: Any = (1, 1) if small_stem else child.padding
                conv = nn.Conv2d(in_channels, child.out_channels, kernel, stride, padding, bias=child.bias is not None)
                setattr(parent, name, conv)
                return


def torchvision_model(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int | Sequence[int] | None = None,
    weights: str | None = None,
    small_stem: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.get_model(name, weights=weights, ...)`` with the first conv and head adapted.

    Args:
        in_channels: the first Conv2d is replaced when it does not take this many channels.
        small_stem: ResNet-style stem for small images: first conv 3x3 stride 1 and no stem max-pool (CIFAR
            ResNets, He et al. 2016). Default: on when ``image_size`` is given and <= 64.
        weights: torchvision weights name (nothing is downloaded here: weights must be cached already); the head
            is replaced when ``num_classes`` differs from the pretrained one.
    """
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"name must be a torchvision classification model, one of {available}, got {name!r}")
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
        last = find_head(model)
        if last is not None and last[2].out_features != num_classes:
            parent, attr, head = last
            setattr(parent, attr, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    if small_stem is None:
        size = None if image_size is None else (image_size if isinstance(image_size, int) else min(image_size))
        small_stem = size is not None and size <= 64
    _replace_first_conv(model, in_channels, small_stem)
    if small_stem and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model
