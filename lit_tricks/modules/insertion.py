"""Insert layers around the hidden activations of a model: a norm after each hidden conv/linear (before its
activation), inverted dropout after each hidden activation. One walk serves both (``insert_around_activations``).

A *hidden activation* is an activation module (ReLU, GELU, Tanh, ...) registered right after a ``Linear`` or
``Conv1d/2d/3d`` (optionally with a norm layer between them) among the children of the same parent module, in
registration order: ``nn.Sequential(conv, ReLU())`` and ``Linear -> BatchNorm1d -> ReLU`` both qualify; the head
(a last Linear with no activation after it) never does. Activations applied functionally in ``forward``
(``x.relu()``) are invisible to this walk: build the model from modules (as ``ConvNet1d`` and ``MLP`` are).

State-dict keys: the activation module at ``<parent>.<i>`` is replaced by an :class:`ActivationBlock` (a
``Sequential``) ``(norm, act)`` / ``(act, dropout)`` / ``(norm, act, dropout)`` at the same place, so every existing
parameter keeps its key; the new norm's parameters and buffers appear as ``<parent>.<i>.0.weight``,
``.0.bias``, ``.0.running_mean``, ... A checkpoint of the model without norms lacks those keys: it loads only with
``strict=False`` (the norms then start from their init), and a normed checkpoint does not load into the plain
model (unexpected keys). Dropout has no parameters, so it changes no key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from lit_tricks.validation import check_choice

__all__ = [
    "ACTIVATIONS",
    "DROPOUT_PLACEMENTS",
    "INSERT_NORM_KINDS",
    "ActivationBlock",
    "HiddenSite",
    "apply_dropout",
    "apply_norm",
    "has_norm",
    "hidden_sites",
    "insert_around_activations",
    "insert_dropout",
    "insert_norm",
    "make_norm",
]

#: Module types that count as activations.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardswish, nn.Hardtanh, nn.Softplus,
)
_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)
INSERT_NORM_KINDS = ("batch", "group", "layer")


class ActivationBlock(nn.Sequential):
    """``[norm] -> activation -> [dropout]``: what an inserted layer turns a hidden activation into; later insertions
    add to the same block (the norm always first, so its keys are ``<block>.0.*`` whatever the order of insertion)."""


@dataclass
class HiddenSite:
    """One hidden activation: ``parent._modules[name]`` is the activation; ``layer`` the conv/linear feeding it."""

    parent: nn.Module
    name: str
    path: str
    layer: nn.Module
    layer_path: str
    has_norm: bool

    @property
    def channels(self) -> int:
        """Output channels (conv) or features (linear) of ``layer``."""
        channels = getattr(self.layer, "out_channels", None) or getattr(self.layer, "out_features")  # noqa: B009
        return int(channels)


def hidden_sites(model: nn.Module) -> list[HiddenSite]:
    """Every hidden activation of ``model`` (see the module docstring), in registration order."""
    sites: list[HiddenSite] = []
    for parent_path, parent in model.named_modules():
        layer: tuple[str, nn.Module] | None = None
        norm_between = False
        for name, child in parent.named_children():
            if isinstance(child, _LAYERS):
                layer, norm_between = (name, child), False
            elif isinstance(child, _NORMS) and layer is not None and not norm_between:
                norm_between = True
            elif isinstance(child, (*ACTIVATIONS, ActivationBlock)) and layer is not None:
                prefix = f"{parent_path}." if parent_path else ""
                has_norm = norm_between or (isinstance(child, ActivationBlock) and isinstance(child[0], _NORMS))
                sites.append(HiddenSite(parent, name, prefix + name, layer[1], prefix + layer[0], has_norm))
                layer = None
            else:
                layer = None
    return sites


def make_norm(kind: str, channels: int, num_groups: int | None = None, where: str = "") -> nn.Module:
    """A fresh norm over dim 1 of ``(N, C, *)``: batch (BatchNorm over N and the spatial dims) | group (GroupNorm
    with ``num_groups``, which must divide ``channels``; None = the largest divisor <= 32) | layer (GroupNorm with
    one group: each sample over all of (C, *), per-channel affine)."""
    from lit_tricks.modules.surgery import BatchNormNd

    if kind == "batch":
        return BatchNormNd(channels)
    if kind == "group":
        if num_groups is None:
            num_groups = max(d for d in range(1, min(32, channels) + 1) if channels % d == 0)
        if channels % num_groups:
            raise ValueError(f"norm=group:{num_groups}: {where or 'a layer'} has {channels} channels, not divisible "
                             f"by {num_groups}")
        return nn.GroupNorm(num_groups, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm: insertable kinds are {list(INSERT_NORM_KINDS)}, got {kind!r}")


def _wrap(site: HiddenSite, before: nn.Module | None, after: nn.Module | None) -> None:
    current = site.parent._modules[site.name]
    assert current is not None
    mods = list(current) if isinstance(current, ActivationBlock) else [current]
    mods = ([before] if before is not None else []) + mods + ([after] if after is not None else [])
    site.parent._modules[site.name] = ActivationBlock(*mods)


def insert_around_activations(
    model: nn.Module,
    before: Callable[[HiddenSite], nn.Module | None] | None = None,
    after: Callable[[HiddenSite], nn.Module | None] | None = None,
) -> int:
    """Replace each hidden activation ``act`` by ``ActivationBlock(before(site), act, after(site))`` (None parts
    left out); returns the number of sites changed. All factories run before the model is touched, so an error leaves
    it unchanged."""
    plans = [(s, before(s) if before else None, after(s) if after else None) for s in hidden_sites(model)]
    changed = 0
    for site, b, a in plans:
        if b is None and a is None:
            continue
        device = next(iter(site.layer.parameters()), None)
        if device is not None:
            b = b.to(device.device) if b is not None else None
            a = a.to(device.device) if a is not None else None
        _wrap(site, b, a)
        changed += 1
    return changed


def insert_norm(model: nn.Module, kind: str, num_groups: int | None = None,
                layers: Sequence[str] | None = None) -> int:
    """Add a ``kind`` norm between each hidden conv/linear and its activation (in place, sites that already have a
    norm are skipped); returns how many were inserted. ``group`` needs ``num_groups`` to divide every layer's
    channels, else ``ValueError`` naming the layer and its channel count (nothing is changed then); None = per layer
    the largest divisor <= 32. ``layers``: fnmatch patterns of the conv/linear layers' paths to norm (None: all);
    a pattern that matches no hidden layer is refused in one line (the notes (000): BatchNorm may be applied to
    selected layers only)."""
    from lit_tricks.modules.surgery import matching_paths

    if kind not in INSERT_NORM_KINDS:
        raise ValueError(f"norm: insertable kinds are {list(INSERT_NORM_KINDS)}, got {kind!r}")
    chosen = matching_paths([s.layer_path for s in hidden_sites(model)], layers, "hidden conv/linear layers")

    def norm(site: HiddenSite) -> nn.Module | None:
        if site.has_norm or site.layer_path not in chosen:
            return None
        where = f"layer {site.layer_path} ({type(site.layer).__name__})"
        return make_norm(kind, site.channels, num_groups, where)

    return insert_around_activations(model, before=norm)


def insert_dropout(model: nn.Module, p: float, factory: Callable[[float], nn.Module] = nn.Dropout) -> int:
    """Add ``factory(p)`` (inverted dropout by default) after each hidden activation, in place; returns the count."""
    return insert_around_activations(model, after=lambda _site: factory(p))


# ------------------------------------------------------------------------------------------ what TrickModule calls
DROPOUT_PLACEMENTS = ("head", "every_hidden")


def has_norm(model: nn.Module) -> bool:
    """Whether ``model`` has any BatchNorm/InstanceNorm/GroupNorm/LayerNorm layer."""
    return any(isinstance(m, _NORMS) for m in model.modules())


def apply_norm(model: nn.Module, norm: str | Mapping[str, Any]) -> nn.Module:
    """``module.norm``: on a model with norm layers, swap them (:func:`~lit_tricks.modules.surgery.swap_norm`); on a
    model without any, ``batch | group:<n> | layer`` *insert* one before each hidden activation (:func:`insert_norm`;
    ``group:<n>`` must then divide every layer's channels); a mapping's ``layers`` selects the layers. A model with
    neither norm layers nor a hidden activation module is refused in one line. Returns ``model``."""
    from lit_tricks.modules.surgery import norm_layers, parse_norm, swap_norm

    kind, groups = parse_norm(norm)
    if kind in INSERT_NORM_KINDS and not has_norm(model):
        if not hidden_sites(model):
            raise ValueError(f"norm={kind}: the model has no norm layer to swap and no hidden conv/linear layer "
                             f"followed by an activation module to insert one at")
        explicit = (isinstance(norm, str) and ":" in norm) or (isinstance(norm, Mapping) and "num_groups" in norm)
        insert_norm(model, kind, groups if explicit else None, norm_layers(norm))
        return model
    return swap_norm(model, norm)


def apply_dropout(model: nn.Module, p: float, kind: str = "dropout", placement: str = "head") -> nn.Module:
    """``module.dropout`` with ``module.dropout_placement``: head = :func:`~lit_tricks.modules.surgery.set_dropout`
    (on the head's input, or the head's weights) | every_hidden = inverted dropout (or ``GaussianDropout`` for
    ``kind=gaussian``) after every hidden activation; for the weight kinds (dropconnect, weight_noise,
    additive_weight_noise) every hidden Linear/Conv layer gets the noise on its weights, sharing its parameters
    (:func:`~lit_tricks.modules.noise.add_weight_noise`); zoneout: every ``nn.GRU`` keeps each hidden unit with
    probability ``p`` per step (:func:`~lit_tricks.modules.zoneout.apply_zoneout`). The model's own Dropout layers
    are left as built; no state-dict key changes. Returns ``model``."""
    from lit_tricks.modules.noise import WEIGHT_KINDS, GaussianDropout, add_weight_noise
    from lit_tricks.modules.surgery import DROPOUT_KINDS, set_dropout
    from lit_tricks.modules.zoneout import apply_zoneout

    check_choice("dropout_placement", placement, DROPOUT_PLACEMENTS)
    check_choice("dropout_kind", kind, DROPOUT_KINDS)
    if placement == "head":
        return set_dropout(model, p, kind)
    if kind == "zoneout":
        apply_zoneout(model, p)
        return model
    sites = hidden_sites(model)
    if not sites:
        raise ValueError("dropout_placement=every_hidden: the model has no hidden activation module after a "
                         "conv/linear layer (activations applied in forward() cannot be reached; a GRU takes "
                         "dropout_kind=zoneout)")
    if kind in WEIGHT_KINDS:
        for site in sites:
            add_weight_noise(site.parent, site.layer_path.rpartition(".")[2], p, kind)
        return model
    factory: Callable[[float], nn.Module] = GaussianDropout if kind == "gaussian" else nn.Dropout
    insert_dropout(model, p, factory)
    return model
