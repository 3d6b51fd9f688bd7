"""Which parameters get weight decay: the decay rule, optimizer parameter groups, decoupled decay, a readable table.

Rule (as timm's ``param_groups_weight_decay``, made explicit): a tensor is decayed unless it is a bias, belongs to a
normalization layer (BatchNorm/GroupNorm/LayerNorm/InstanceNorm/LocalResponseNorm, or is the magnitude ``g`` of a
weight-norm parametrization), belongs to an embedding, is 1-D, matches one of ``exclude`` (``fnmatch`` patterns on
the parameter name), or is listed by a module's own ``no_weight_decay()`` (names relative to that module).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_TYPES",
    "decay_mask",
    "decoupled_weight_decay_",
    "describe_param_groups",
    "param_groups",
    "split_decay",
]

#: Module types whose parameters are normalization scales/shifts (never decayed by default).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _own_no_weight_decay(model: nn.Module) -> set[str]:
    """Full parameter names listed by any submodule's ``no_weight_decay()`` (timm's convention)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            for name in hook():
                names.add(f"{prefix}.{name}" if prefix else str(name))
    return names


def decay_mask(
    model: nn.Module,
    *,
    exclude: Sequence[str] = (),
    exclude_bias: bool = True,
    exclude_norm: bool = True,
    exclude_embedding: bool = True,
) -> dict[str, bool]:
    """``{parameter name: decayed?}`` for every trainable parameter of ``model`` (see the module docstring)."""
    owner: dict[str, nn.Module] = {}
    for prefix, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owner[f"{prefix}.{pname}" if prefix else pname] = module
    own = _own_no_weight_decay(model)
    mask: dict[str, bool] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module = owner.get(name)
        leaf = name.rsplit(".", 1)[-1]
        no = False
        if exclude_bias and (leaf == "bias" or p.ndim <= 1):
            no = True
        elif exclude_norm and (isinstance(module, NORM_TYPES) or name.endswith("parametrizations.weight.original0")):
            no = True
        elif exclude_embedding and isinstance(module, _EMBEDDING_TYPES):
            no = True
        elif name in own or any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            no = True
        mask[name] = not no
    return mask


def split_decay(model: nn.Module, **kwargs: Any) -> tuple[list[str], list[str]]:
    """(decayed names, not-decayed names), each in ``named_parameters`` order; kwargs as :func:`decay_mask`."""
    mask = decay_mask(model, **kwargs)
    return [n for n, d in mask.items() if d], [n for n, d in mask.items() if not d]


def param_groups(model: nn.Module, weight_decay: float, **kwargs: Any) -> list[dict[str, Any]]:
    """Two optimizer groups with explicit ``weight_decay`` (``weight_decay`` and 0.0); empty groups dropped.

    Each group also carries ``lit_tricks_decay``, the decay meant for it, so a caller can zero ``weight_decay``
    and apply the decay itself (decoupled, or as a loss term); :func:`describe_param_groups` lists the names.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model, **kwargs)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": float(weight_decay),
         "lit_tricks_decay": float(weight_decay)},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "lit_tricks_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def decoupled_weight_decay_(groups: Iterable[dict[str, Any]], key: str = "lit_tricks_decay") -> None:
    """In place ``p <- p * (1 - lr * wd)`` for every group with ``wd = group[key] > 0`` (AdamW's decay, any optimizer).

    Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization": the shrink uses the group's current lr,
    applied before the optimizer's own update, as ``torch.optim.AdamW`` does.
    """
    for group in groups:
        wd = float(group.get(key, 0.0))
        if wd == 0.0:
            continue
        lr = group["lr"]
        lr = float(lr) if not isinstance(lr, torch.Tensor) else lr
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            torch._foreach_mul_(params, 1.0 - lr * wd)


def describe_param_groups(model: nn.Module, weight_decay: float, l1: float = 0.0, **kwargs: Any) -> str:
    """A table of every trainable tensor: name, shape, weight decay and L1 applied to it (decay mask of
    :func:`decay_mask`; L1 follows the same mask)."""
    mask = decay_mask(model, **kwargs)
    params = dict(model.named_parameters())
    rows = [("parameter", "shape", "weight_decay", "l1")]
    for name, decayed in mask.items():
        shape = "x".join(str(s) for s in params[name].shape) or "scalar"
        rows.append((name, shape, f"{weight_decay if decayed else 0.0:g}", f"{l1 if decayed else 0.0:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    n_decay = sum(mask.values())
    lines.append(f"{n_decay} decayed tensors, {len(mask) - n_decay} not decayed")
    return "\n".join(lines)
