"""Two small Hydra/OmegaConf helpers every room may use: the running app's ``hydra`` config, and config values as
plain Python containers. Imports only Hydra and OmegaConf (lazily, so a caller outside Hydra pays nothing)."""

from __future__ import annotations

from typing import Any

__all__ = ["hydra_config", "is_multirun", "to_plain"]


def hydra_config() -> Any | None:
    """The running Hydra app's ``hydra`` node (``HydraConfig.get()``: ``runtime``, ``job``, ``sweeper``, ``mode``,
    ``overrides``, ...), or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    """Whether the running Hydra app is a multirun (``-m``: a sweep whose jobs the sweeper records)."""
    hc = hydra_config()
    if hc is None:
        return False
    from hydra.types import RunMode

    return bool(hc.mode == RunMode.MULTIRUN)


def to_plain(value: Any) -> Any:
    """An OmegaConf ``DictConfig``/``ListConfig`` as plain dicts/lists (interpolations resolved); any other value
    unchanged (torchvision and torch check for ``list``/``tuple``/``dict``; checkpoints must hold plain types)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
