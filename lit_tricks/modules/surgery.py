"""Model surgery usable on any ``nn.Module``: swap normalization layers, set or insert dropout, recompute BatchNorm
statistics; weight initialization is :mod:`lit_tricks.modules.initialization` and the noise layers are
:mod:`lit_tricks.modules.noise` (both re-exported here).

Each surgery is one public function with its own allowed-value list; they share the walk over a model's children
and the head finder.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from lit_tricks.functional.batchnorm import recalibrate_bn_
from lit_tricks.models.heads import find_head
from lit_tricks.modules.initialization import INIT_SCHEMES, init_weights
from lit_tricks.modules.noise import (
    WEIGHT_KINDS,
    AdditiveWeightNoiseLinear,
    DropConnectLinear,
    GaussianDropout,
    WeightNoiseLinear,
    add_input_dropout,
    add_weight_noise,
    noisy_layers,
)
from lit_tricks.validation import ArgumentError, check_choice, check_number

__all__ = [
    "DROPOUT_KINDS",
    "INIT_SCHEMES",
    "NORM_KINDS",
    "WEIGHT_KINDS",
    "AdditiveWeightNoiseLinear",
    "BatchNormNd",
    "DropConnectLinear",
    "GaussianDropout",
    "WeightNoiseLinear",
    "find_head",
    "init_weights",
    "matching_paths",
    "noisy_layers",
    "norm_layers",
    "parse_norm",
    "recalibrate_bn",
    "set_dropout",
    "swap_norm",
]

NORM_KINDS = ("keep", "batch", "group", "layer", "weight", "none")
#: dropout_kind: on activations (dropout, gaussian), on weights (WEIGHT_KINDS), on a GRU's hidden state (zoneout)
DROPOUT_KINDS = ("dropout", "dropconnect", "gaussian", "weight_noise", "additive_weight_noise", "zoneout")
_NORM_LAYERS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)
_DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


# ----------------------------------------------------------------------------------------------------------- norms
class BatchNormNd(_BatchNorm):
    """BatchNorm over dim 1 of any (N, C, *) input (what BatchNorm1d/2d/3d compute, without the rank check)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, *) input, got {input.dim()}D")


def parse_norm(norm: str | Mapping[str, Any]) -> tuple[str, int]:
    """``"group:8"`` / ``{"kind": "group", "num_groups": 8}`` / ``"layer"`` -> (kind, num_groups) with validation
    (a mapping may also hold ``layers``: :func:`norm_layers`)."""
    if isinstance(norm, Mapping):
        unknown = sorted(set(norm) - {"kind", "num_groups", "layers"})
        if unknown:
            raise ArgumentError("norm", dict(norm), f"has unknown keys {unknown} (allowed: kind, num_groups, layers)")
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
    if kind == "weight" and norm_layers(norm) is not None:
        raise ArgumentError("layers", norm_layers(norm), "selects norm layers for kind batch/group/layer/none; "
                            "kind=weight reparametrizes every conv/linear layer", owner="norm")
    return str(kind), int(groups)


def norm_layers(norm: str | Mapping[str, Any]) -> tuple[str, ...] | None:
    """The ``layers`` of a norm mapping: fnmatch patterns of the layer paths the norm surgery acts on (None: all).

    A swap matches the norm layers' own paths (SmallCNN: ``features.1``); an insertion matches the conv/linear layer
    a new norm follows (MLP: ``features.1``, ConvNet1d: ``features.0``): BatchNorm on selected layers only."""
    layers = norm.get("layers") if isinstance(norm, Mapping) else None
    if layers is None:
        return None
    if isinstance(layers, str) or not layers or not all(isinstance(p, str) for p in layers):
        raise ArgumentError("layers", layers, "must be a non-empty list of layer-path patterns (fnmatch), e.g. "
                            "['features.0']", owner="norm")
    return tuple(layers)


def matching_paths(paths: Sequence[str], patterns: Sequence[str] | None, what: str) -> set[str]:
    """The ``paths`` matching any of ``patterns`` (all of them for None); a pattern matching none is refused in one
    line listing the ``what`` paths there are."""
    if patterns is None:
        return set(paths)
    for pattern in patterns:
        if not fnmatch.filter(paths, pattern):
            raise ArgumentError("layers", list(patterns), f"pattern {pattern!r} matches none of the model's {what} "
                                f"{list(paths)}", owner="norm")
    return {p for p in paths if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns)}


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
    MLPs); a LayerNorm over several trailing dims is left as is. A mapping's ``layers`` (:func:`norm_layers`) limits
    the swap to the norm layers whose paths match, e.g. ``{kind: none, layers: ["features.4"]}`` keeps BatchNorm on
    the other layers only.
    """
    norm_kind, num_groups = parse_norm(kind)
    if norm_kind == "keep":
        return model
    found = [(f"{pp}.{name}" if pp else name, parent, name, child) for pp, parent in model.named_modules()
             for name, child in parent.named_children() if isinstance(child, _NORM_LAYERS)]
    chosen = matching_paths([f[0] for f in found], norm_layers(kind), "norm layers")
    for path, parent, name, child in found:
        if path in chosen and (new := _replacement(child, norm_kind, num_groups)) is not None:
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
def set_dropout(model: nn.Module, p: float, kind: str = "dropout", insert: str = "auto") -> nn.Module:
    """Set dropout probability ``p`` in place; returns ``model``. Inverted dropout: eval needs no rescaling.

    ``kind``: dropout (set ``p`` of every Dropout layer) | gaussian (every Dropout layer becomes
    :class:`GaussianDropout`) | dropconnect / weight_noise / additive_weight_noise (noise on the head's weights, the
    head sharing its parameters: :class:`DropConnectLinear`, :class:`WeightNoiseLinear`,
    :class:`AdditiveWeightNoiseLinear`; other Dropout layers are left alone).
    ``insert`` (dropout/gaussian): auto = apply a dropout layer to the head's input (last ``nn.Linear``) only when
    ``model`` has no Dropout layer | always | never. The inserted layer is ``<head>.input_dropout`` (a forward
    pre-hook), so every state-dict key stays and the weights load into the model as built.
    """
    check_number("dropout", p, 0.0, 1.0)
    check_choice("dropout_kind", kind, DROPOUT_KINDS)
    check_choice("insert", insert, ("auto", "always", "never"))
    if kind == "zoneout":
        raise ArgumentError("dropout_placement", "head", "must be every_hidden for dropout_kind='zoneout' (it acts on "
                            "the recurrent layers' hidden state)")
    head = find_head(model)
    if kind in WEIGHT_KINDS:
        if head is None:
            raise ValueError(f"dropout_kind={kind!r} needs an nn.Linear head, and the model has none")
        add_weight_noise(head[0], head[1], p, kind)
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
        add_input_dropout(head[2], GaussianDropout(p) if kind == "gaussian" else nn.Dropout(p))
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
