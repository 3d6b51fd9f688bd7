"""Layers that add noise in training only (eval computes the plain layer): Gaussian dropout on activations, and
DropConnect / Gaussian weight noise on the weights of a Linear or Conv1d/2d/3d layer.

A weight-noise layer *replaces* the layer and shares its parameters, so every state-dict key stays and the trained
weights load into the network as built. A layer whose weight is already reparametrized (``norm=weight``) gets the
noise as one more parametrization instead, which keeps its keys too. The notes (000) list both kinds of weight
noise, "add or multiply weight-dependent Gaussian noise", beside dropping connections (DropConnect).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lit_tricks.modules.zoneout import ZoneoutGRU

__all__ = [
    "WEIGHT_KINDS",
    "AdditiveWeightNoiseLinear",
    "DropConnectLinear",
    "GaussianDropout",
    "NoisyConv1d",
    "NoisyConv2d",
    "NoisyConv3d",
    "WeightNoise",
    "WeightNoiseLinear",
    "add_input_dropout",
    "add_weight_noise",
    "noisy_layers",
    "noisy_weight",
]

#: The kinds that act on a layer's weights: dropconnect (drop each weight with probability p, rescale by 1/(1-p)) |
#: weight_noise (multiply each weight by 1 + sqrt(p/(1-p)) N(0,1)) | additive_weight_noise (add p N(0,1)).
WEIGHT_KINDS = ("dropconnect", "weight_noise", "additive_weight_noise")


def noisy_weight(weight: Tensor, kind: str, p: float) -> Tensor:
    """One training-time draw of ``weight`` under ``kind`` (one of :data:`WEIGHT_KINDS`): DropConnect
    ``W * Bernoulli(1 - p) / (1 - p)`` (Wan et al., 2013); multiplicative ``W * (1 + sqrt(p / (1 - p)) * N(0, 1))``
    (the Gaussian with DropConnect's mean 1 and variance ``p / (1 - p)``; Wang & Manning, 2013); additive
    ``W + p * N(0, 1)`` (``p`` is the noise's standard deviation in weight units; Graves, 2011)."""
    if p == 0.0:
        return weight
    if kind == "dropconnect":
        return weight * (torch.empty_like(weight).bernoulli_(1.0 - p) / (1.0 - p))
    if kind == "weight_noise":
        return weight * (1.0 + math.sqrt(p / (1.0 - p)) * torch.randn_like(weight))
    if kind == "additive_weight_noise":
        return weight + p * torch.randn_like(weight)
    raise ValueError(f"dropout_kind must be one of {list(WEIGHT_KINDS)}, got {kind!r}")


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

    kind = "dropconnect"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5, **kw: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.p = p

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> DropConnectLinear:
        """A layer of this class sharing ``linear``'s parameters (built on the meta device: nothing is initialized)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, p=p, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
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

    kind = "weight_noise"

    def weight_mask(self) -> Tensor:
        """The training-time multiplier of the weights: 1 + sqrt(p / (1 - p)) * N(0, 1)."""
        return 1.0 + math.sqrt(self.p / (1.0 - self.p)) * torch.randn_like(self.weight)


class AdditiveWeightNoiseLinear(DropConnectLinear):
    """Linear layer whose weights get additive Gaussian noise in training, ``W + p * N(0, 1)`` drawn per weight and
    per forward (``p`` is the standard deviation, in the weights' units); eval uses the weights as they are. Graves
    (2011), "Practical variational inference for neural networks" (the fixed-variance case); An (1996)."""

    kind = "additive_weight_noise"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, noisy_weight(self.weight, self.kind, self.p), self.bias)


class _NoisyConv:
    """Conv layer whose weights get ``kind`` noise (:func:`noisy_weight`) in training; eval uses them as they are."""

    p: float = 0.0
    kind: str = "dropconnect"

    def forward(self, x: Tensor) -> Tensor:
        me: Any = self  # an nn.Conv1d/2d/3d: weight, bias, training and _conv_forward come from there
        weight = noisy_weight(me.weight, self.kind, self.p) if me.training else me.weight
        return me._conv_forward(x, weight, me.bias)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}, p={self.p}"  # type: ignore[misc]


class NoisyConv1d(_NoisyConv, nn.Conv1d):
    """``nn.Conv1d`` with DropConnect / weight noise on its weights in training (``kind``, ``p``)."""


class NoisyConv2d(_NoisyConv, nn.Conv2d):
    """``nn.Conv2d`` with DropConnect / weight noise on its weights in training (``kind``, ``p``)."""


class NoisyConv3d(_NoisyConv, nn.Conv3d):
    """``nn.Conv3d`` with DropConnect / weight noise on its weights in training (``kind``, ``p``)."""


_NOISY_CONV: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: NoisyConv1d, nn.Conv2d: NoisyConv2d, nn.Conv3d: NoisyConv3d,
}
_LINEAR: dict[str, type[DropConnectLinear]] = {
    "dropconnect": DropConnectLinear, "weight_noise": WeightNoiseLinear,
    "additive_weight_noise": AdditiveWeightNoiseLinear,
}


class WeightNoise(nn.Module):
    """The noise of :func:`noisy_weight` as a parametrization (for a weight already reparametrized, e.g. by
    ``torch.nn.utils.parametrizations.weight_norm``); identity in eval. It has no parameters: no key changes."""

    def __init__(self, kind: str, p: float) -> None:
        super().__init__()
        self.kind, self.p = kind, p

    def forward(self, weight: Tensor) -> Tensor:
        return noisy_weight(weight, self.kind, self.p) if self.training else weight

    def extra_repr(self) -> str:
        return f"kind={self.kind}, p={self.p}"


def _conv_copy(conv: nn.Module, cls: type[nn.Module], p: float, kind: str) -> nn.Module:
    c: Any = conv
    new: Any = cls(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                   dilation=c.dilation, groups=c.groups, bias=c.bias is not None, padding_mode=c.padding_mode,
                   device="meta")
    new.weight, new.bias = c.weight, c.bias
    new.p, new.kind = p, kind
    return new  # type: ignore[no-any-return]


def add_weight_noise(parent: nn.Module, name: str, p: float, kind: str) -> None:
    """Give ``parent.<name>`` (an ``nn.Linear`` or ``nn.Conv1d/2d/3d``) ``kind`` noise on its weights with ``p``,
    keeping its parameters and state-dict keys: the layer becomes the noisy class sharing its parameters, or a layer
    already noisy gets the new kind and ``p``; a reparametrized weight gets a :class:`WeightNoise` parametrization."""
    layer = parent._modules[name]
    assert layer is not None
    if parametrize.is_parametrized(layer, "weight"):
        chain: Any = layer.parametrizations["weight"]  # type: ignore[index]
        for existing in chain:
            if isinstance(existing, WeightNoise):
                existing.kind, existing.p = kind, p
                return
        parametrize.register_parametrization(layer, "weight", WeightNoise(kind, p))
        return
    if isinstance(layer, nn.Linear):
        cls = _LINEAR[kind]
        if type(layer) is cls:
            layer.p = p  # type: ignore[assignment]
            return
        parent._modules[name] = cls.from_linear(layer, p)
        return
    for base, noisy in _NOISY_CONV.items():
        if type(layer) is noisy:
            layer.p, layer.kind = p, kind  # type: ignore[assignment]
            return
        if type(layer) is base:
            parent._modules[name] = _conv_copy(layer, noisy, p, kind)
            return
    raise TypeError(f"dropout_kind={kind!r} acts on nn.Linear and nn.Conv1d/2d/3d layers, got {type(layer).__name__}")


# ----------------------------------------------------------------------------------- dropout on a layer's input
def _input_dropout_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    drop: Any = module.input_dropout
    return (drop(args[0]), *args[1:])


def _sequential_head_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Keys of a checkpoint saved when the head was wrapped as ``Sequential(Dropout, head)`` (``<head>.1.weight``)
    are read as the head's own (``<head>.weight``)."""
    old = prefix + "1."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict.setdefault(prefix + key[len(old):], state_dict.pop(key))


def add_input_dropout(layer: nn.Module, drop: nn.Module) -> None:
    """Apply ``drop`` to the input of ``layer`` (a forward pre-hook): ``drop`` becomes ``layer.input_dropout``, a
    child with no parameters, so no state-dict key changes. A second call replaces the dropout module."""
    if isinstance(getattr(layer, "input_dropout", None), nn.Module):
        layer.input_dropout = drop
        return
    layer.add_module("input_dropout", drop)
    layer.register_forward_pre_hook(_input_dropout_hook)
    layer.register_load_state_dict_pre_hook(_sequential_head_keys)


def noisy_layers(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` that add noise in training with ``p > 0``: Dropout layers,
    :class:`GaussianDropout`, the weight-noise layers and parametrizations, and :class:`ZoneoutGRU`."""
    kinds = (nn.modules.dropout._DropoutNd, GaussianDropout, DropConnectLinear, _NoisyConv, WeightNoise, ZoneoutGRU)
    return [name for name, m in model.named_modules() if isinstance(m, kinds) and float(getattr(m, "p", 0.0)) > 0.0]
