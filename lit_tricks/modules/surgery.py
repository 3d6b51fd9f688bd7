"""Model surgery usable on any ``nn.Module``: swap normalization layers, set or insert dropout, recompute BatchNorm
statistics; weight initialization is :mod:`lit_tricks.modules.initialization` (re-exported here).

Each surgery is one public function with its own allowed-value list; they share the walk over a model's children
and the head finder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from lit_tricks.functional.batchnorm import recalibrate_bn_
from lit_tricks.models.heads import find_head
from lit_tricks.modules.initialization import INIT_SCHEMES, init_weights
from lit_tricks.validation import ArgumentError, check_choice, check_number

__all__ = [
    "DROPOUT_KINDS",
    "INIT_SCHEMES",
    "NORM_KINDS",
    "WEIGHT_KINDS",
    "BatchNormNd",
    "DropConnectLinear",
    "GaussianDropout",
    "WeightNoiseLinear",
    "find_head",
    "init_weights",
    "noisy_layers",
    "parse_norm",
    "recalibrate_bn",
    "set_dropout",
    "swap_norm",
]

NORM_KINDS = ("keep", "batch", "group", "layer", "weight", "none")
DROPOUT_KINDS = ("dropout", "dropconnect", "gaussian", "weight_noise")
#: the kinds that act on a Linear layer's weights (the layer is replaced by one sharing its parameters)
WEIGHT_KINDS = ("dropconnect", "weight_noise")
_NORM_LAYERS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)
_DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


# ----------------------------------------------------------------------------------------------------------- norms
class BatchNormNd(_BatchNorm):
    """BatchNorm over dim 1 of any (N, C, *) input (what BatchNorm1d/2d/3d compute, without the rank check)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, *) input, got {input.dim()}D")


def parse_norm(norm: str | Mapping[str, Any]) -> tuple[str, int]:
    """``"group:8"`` / ``{"kind": "group", "num_groups": 8}`` / ``"layer"`` -> (kind, num_groups) with validation."""
    if isinstance(norm, Mapping):
        kind, groups = norm.get("kind"), norm.get("num_groups", 32)
    elif isinstance(norm, str):
        kind, _, rest = norm.partition(":")
        if rest and not rest.isdigit():
            raise ValueError(f"norm: group shorthand is 'group:<num_groups>' (e.g. group:8), got {norm!r}")
        groups = int(rest) if rest else 32
    else:
        raise TypeError(f"norm must be a string or a mapping with 'kind', got {type(norm).__name__}")
    if kind not in NORM_KINDS:
        raise ArgumentError("norm", norm, f"must be one of {list(NORM_KINDS)} (or group:<n>)")
    check_number("num_groups", groups, 1, integer=True, owner="norm")
    return str(kind), int(groups)


def _channels(layer: nn.Module) -> int | None:
    if isinstance(layer, _NormBase):
        return int(layer.num_features)
    if isinstance(layer, nn.GroupNorm):
        return int(layer.num_channels)
    if isinstance(layer, nn.LayerNorm):
        shape = layer.normalized_shape
        return int(shape[0]) if len(shape) == 1 else None
    return None


def _affine(layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    weight = getattr(layer, "weight", None)
    bias = getattr(layer, "bias", None)
    return (weight if isinstance(weight, Tensor) else None, bias if isinstance(bias, Tensor) else None)


def _divisor_at_most(channels: int, n: int) -> int:
    return max(d for d in range(1, min(n, channels) + 1) if channels % d == 0)


def _replacement(layer: nn.Module, kind: str, num_groups: int) -> nn.Module | None:
    """The layer ``layer`` becomes, or None to leave it alone."""
    if kind in ("none", "weight"):
        return nn.Identity()
    channels = _channels(layer)
    if channels is None:  # a LayerNorm over several trailing dims: no channel-wise equivalent
        return None
    eps = float(getattr(layer, "eps", 1e-5))
    new: nn.Module
    if kind == "batch":
        if isinstance(layer, _BatchNorm):
            return None
        new = BatchNormNd(channels, eps=eps)
    elif kind == "group":
        groups = _divisor_at_most(channels, num_groups)
        if isinstance(layer, nn.GroupNorm) and layer.num_groups == groups:
            return None
        new = nn.GroupNorm(groups, channels, eps=eps)
    else:  # layer: normalize each sample over all of (C, *), per-channel affine (GroupNorm with one group)
        if isinstance(layer, nn.LayerNorm) or (isinstance(layer, nn.GroupNorm) and layer.num_groups == 1):
            return None
        new = nn.GroupNorm(1, channels, eps=eps)
    weight, bias = _affine(layer)
    with torch.no_grad():
        if weight is not None and weight.shape == new.weight.shape:
            new.weight.copy_(weight)
        if bias is not None and bias.shape == new.bias.shape:
            new.bias.copy_(bias)
    return new.to(next(iter(layer.parameters()), torch.zeros(())).device)


def swap_norm(model: nn.Module, kind: str | Mapping[str, Any]) -> nn.Module:
    """Replace every BatchNorm/GroupNorm/LayerNorm of ``model`` in place; returns ``model``.

    ``kind``: keep | batch | group (``"group:<n>"`` or ``{"kind": "group", "num_groups": n}``; n is lowered to the
    largest divisor of the channel count) | layer (GroupNorm with one group: statistics over (C, H, W) per sample)
    | none (Identity) | weight (norm layers removed and every Conv/Linear weight reparametrized as
    ``w = g * v / ||v||`` with ``torch.nn.utils.parametrizations.weight_norm``; Salimans & Kingma, 2016).
    Affine scale/shift are copied where the shapes match. Channel-wise swaps assume channels on dim 1 (CNNs,
    MLPs); a LayerNorm over several trailing dims is left as is.
    """
    norm_kind, num_groups = parse_norm(kind)
    if norm_kind == "keep":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORM_LAYERS):
                new = _replacement(child, norm_kind, num_groups)
                if new is not None:
                    parent._modules[name] = new
    if norm_kind == "weight":
        from torch.nn.utils.parametrizations import weight_norm
        from torch.nn.utils.parametrize import is_parametrized

        for module in list(model.modules()):
            if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) and not is_parametrized(
                module, "weight"
            ):
                weight_norm(module, name="weight", dim=0)
    return model


# --------------------------------------------------------------------------------------------------------- dropout
class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise ``x * (1 + sqrt(p / (1 - p)) * N(0, 1))`` in training, identity in eval.

    Same mean and variance as inverted dropout with drop probability ``p`` (Srivastava et al., 2014, sec. 10).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (1.0 + math.sqrt(self.p / (1.0 - self.p)) * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropConnectLinear(nn.Linear):
    """Linear layer whose weights (not activations) are dropped with probability ``p`` in training, rescaled by
    ``1 / (1 - p)`` (inverted, so eval uses the weights as they are). Wan et al. (2013), "DropConnect"."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.p = p

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> DropConnectLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, p=p)
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def weight_mask(self) -> Tensor:
        """The training-time multiplier of the weights: Bernoulli(1 - p) / (1 - p) (mean 1)."""
        return torch.empty_like(self.weight).bernoulli_(1.0 - self.p) / (1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return super().forward(x)
        return F.linear(x, self.weight * self.weight_mask(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class WeightNoiseLinear(DropConnectLinear):
    """Linear layer whose weights get multiplicative Gaussian noise in training, ``W * (1 + sqrt(p / (1 - p)) *
    N(0, 1))`` drawn per weight and per forward; eval uses the weights as they are. The multiplier has the mean (1)
    and variance (``p / (1 - p)``) of DropConnect's, as :class:`GaussianDropout` has those of dropout: the Gaussian
    counterpart of DropConnect (Wang & Manning, 2013, "Fast dropout training"). ``p`` < 1."""

    def weight_mask(self) -> Tensor:
        """The training-time multiplier of the weights: 1 + sqrt(p / (1 - p)) * N(0, 1)."""
        return 1.0 + math.sqrt(self.p / (1.0 - self.p)) * torch.randn_like(self.weight)


def weight_layer_class(kind: str) -> type[DropConnectLinear]:
    """The Linear replacement of a weight-acting dropout ``kind`` (one of :data:`WEIGHT_KINDS`)."""
    return WeightNoiseLinear if kind == "weight_noise" else DropConnectLinear


def replace_linear(parent: nn.Module, name: str, layer: nn.Linear, p: float, kind: str) -> None:
    """``parent.<name>`` (an ``nn.Linear``) becomes the ``kind`` layer sharing its parameters (and state-dict keys);
    one that already is of that class only gets the new ``p``."""
    cls = weight_layer_class(kind)
    if type(layer) is cls:
        layer.p = p
        return
    parent._modules[name] = cls.from_linear(layer, p)


def noisy_layers(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` that add noise in training with ``p > 0``: Dropout layers,
    :class:`GaussianDropout`, :class:`DropConnectLinear` and :class:`WeightNoiseLinear`."""
    kinds = (*_DROPOUT_LAYERS, GaussianDropout, DropConnectLinear)
    return [name for name, m in model.named_modules() if isinstance(m, kinds) and float(getattr(m, "p", 0.0)) > 0.0]


def set_dropout(model: nn.Module, p: float, kind: str = "dropout", insert: str = "auto") -> nn.Module:
    """Set dropout probability ``p`` in place; returns ``model``. Inverted dropout: eval needs no rescaling.

    ``kind``: dropout (set ``p`` of every Dropout layer) | gaussian (every Dropout layer becomes
    :class:`GaussianDropout`) | dropconnect (the head's weights are dropped: the head becomes a
    :class:`DropConnectLinear` sharing its parameters; other Dropout layers are left alone) | weight_noise (the
    same with multiplicative Gaussian noise on the head's weights: :class:`WeightNoiseLinear`).
    ``insert`` (dropout/gaussian): auto = put a layer before the head (last ``nn.Linear``) only when ``model`` has
    no Dropout layer | always | never.
    """
    check_number("dropout", p, 0.0, 1.0)
    check_choice("dropout_kind", kind, DROPOUT_KINDS)
    check_choice("insert", insert, ("auto", "always", "never"))
    head = find_head(model)
    if kind in WEIGHT_KINDS:
        if head is None:
            raise ValueError(f"dropout_kind={kind!r} needs an nn.Linear head, and the model has none")
        parent, name, layer = head
        replace_linear(parent, name, layer, p, kind)
        return model
    found = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (*_DROPOUT_LAYERS, GaussianDropout)):
                found = True
                if kind == "gaussian" and not isinstance(child, GaussianDropout):
                    parent._modules[name] = GaussianDropout(p)
                else:
                    setattr(child, "p", p)  # noqa: B010 - Dropout and GaussianDropout both have p
    if insert == "always" or (insert == "auto" and not found):
        if head is None:
            raise ValueError("cannot insert dropout before the head: the model has no nn.Linear layer")
        parent, name, layer = head
        drop: nn.Module = GaussianDropout(p) if kind == "gaussian" else nn.Dropout(p)
        parent._modules[name] = nn.Sequential(drop, layer)
    return model


# -------------------------------------------------------------------------------------------------- BN statistics
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Any],
    num_batches: int | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Recompute the running mean/var of every BatchNorm in ``model`` from ``num_batches`` batches of ``loader``
    (all when None), as a cumulative average (``momentum=None``), like ``torch.optim.swa_utils.update_bn``.

    Use after swapping in averaged weights (EMA/SWA) or any weights whose statistics no longer match. Batches may
    be tensors or ``(x, ...)`` tuples (:func:`~lit_tricks.functional.batchnorm.batch_inputs`); ``model(x)`` is
    called on ``device`` (default: the model's), so pass a module that applies any preprocessing. Training mode and
    momenta are restored afterwards (:func:`~lit_tricks.functional.batchnorm.recalibrate_bn_`).
    """
    if num_batches is not None:
        check_number("num_batches", num_batches, 1, integer=True)
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(())).device
    recalibrate_bn_(model, loader, num_batches=num_batches, device=device)
    return model
