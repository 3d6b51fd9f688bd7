"""How an augmentation step is written in a config, read once for the image pipeline and the signal pipeline:
``"name"``, ``{"name": {kwargs}}`` (one key) or ``{"name": "name", **kwargs}``, built from a registry of factories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["build_step", "split_step"]


def split_step(step: Any) -> tuple[str, dict[str, Any]] | None:
    """``(name, kwargs)`` of a step written as a name or a mapping; None for anything else (the caller decides)."""
    if isinstance(step, str):
        return step, {}
    if isinstance(step, Mapping) and "name" in step:
        return step["name"], {k: v for k, v in step.items() if k != "name"}
    if isinstance(step, Mapping) and len(step) == 1:
        name, raw = next(iter(step.items()))
        return name, dict(raw or {})
    return None


def build_step(name: str, kwargs: dict[str, Any], registry: Mapping[str, Callable[..., Any]], what: str,
               convert: Callable[[dict[str, Any]], dict[str, Any]] = dict) -> Any:
    """``registry[name](**convert(kwargs))``, with one-line errors naming ``what``, the step and the valid names."""
    if name not in registry:
        raise ValueError(f"{what}: unknown name {name!r}; valid: {sorted(registry)}")
    try:
        return registry[name](**convert(kwargs))
    except TypeError as err:
        raise TypeError(f"{what} {name!r}: bad arguments {kwargs!r}: {err}") from err
