"""Tensor names across model wrappers: one rule for matching a wrapped model's ``state_dict`` keys to a plain one.

``torch.compile`` puts the model under ``_orig_mod``, DDP/DataParallel under ``module``, Lightning/Fabric under
``_forward_module``: the same tensor is ``net.fc.weight`` in one model and ``net._orig_mod.fc.weight`` or
``module.net.fc.weight`` in another. EMA twins, ensemble members and model soups are matched by this rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

__all__ = ["WRAPPER_SEGMENTS", "match_wrapped_keys", "strip_wrapper_prefixes"]

#: Name segments a wrapper inserts: ``_orig_mod`` (torch.compile), ``module`` (DDP/DataParallel),
#: ``_forward_module`` (Lightning/Fabric's wrapping of the LightningModule).
WRAPPER_SEGMENTS = ("_orig_mod", "module", "_forward_module")

_V = TypeVar("_V")


def strip_wrapper_prefixes(name: str) -> str:
    """Drop every ``_orig_mod.`` (torch.compile), ``module.`` (DDP/DataParallel) and ``_forward_module.`` segment.

    Used to match tensor names across wrapped and unwrapped models, e.g.
    ``"model._orig_mod.fc.weight" -> "model.fc.weight"``.
    """
    return ".".join(p for p in name.split(".") if p not in WRAPPER_SEGMENTS)


def match_wrapped_keys(state: Mapping[str, _V], reference_keys: Iterable[str]) -> dict[str, _V]:
    """``state`` with its keys renamed to the ``reference_keys`` they stand for across wrappers.

    A key found among ``reference_keys`` stays; any other becomes the reference key with the same
    :func:`strip_wrapper_prefixes` name (either side may be the wrapped one), or that stripped name when no reference
    key has it. The result loads with ``load_state_dict(strict=True)`` into the model ``reference_keys`` came from
    when both hold the same tensors.
    """
    ref = list(reference_keys)
    ref_set = set(ref)
    if ref_set.issuperset(state):
        return dict(state)
    by_plain = {strip_wrapper_prefixes(k): k for k in ref}
    out: dict[str, _V] = {}
    for key, value in state.items():
        if key in ref_set:
            out[key] = value
        else:
            plain = strip_wrapper_prefixes(key)
            out[by_plain.get(plain, plain)] = value
    return out
