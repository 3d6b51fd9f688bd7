"""Building one run's parts from a composed config: DataModule, model, LightningModule, callbacks, loggers.

Below :mod:`lit_tricks.run` (which fits and reports) so that other tools, e.g. :mod:`lit_tricks.sweeps.ensemble`,
rebuild a job's parts without importing the run itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

__all__ = ["build_callbacks", "build_datamodule", "build_loggers", "build_model", "build_module"]

#: The model constructor keywords filled from the DataModule when the target accepts them.
MODEL_FILL = ("num_classes", "in_channels", "image_size")


def _accepted_kwargs(target: Any) -> set[str] | None:
    """Names a callable accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _build(key: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node)``; a constructor that refuses its config is a ``ConfigError`` naming ``key`` (and the
    command-line overrides that set it), so a bad value is one line and leaves no run behind."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        from lit_tricks.config_checks import ConfigError
        from lit_tricks.hydra_utils import hydra_config
        from lit_tricks.records import error_chain

        root = err
        while root.__cause__ is not None:
            root = root.__cause__  # type: ignore[assignment]
        if all(hasattr(root, a) for a in ("arg", "value", "problem")):  # a lit_tricks ArgumentError
            raise ConfigError([f"{key}.{root.arg}={root.value!r}: {root.problem}"]) from err  # type: ignore[attr-defined]
        hc = hydra_config()
        mine = [o for o in (hc.overrides.task if hc is not None else []) if o.lstrip("+~").startswith(key)]
        raise ConfigError([f"{key}{' (' + ' '.join(mine) + ')' if mine else ''}: {error_chain(err)[-1]}"]) from err


def _maybe_instantiate(key: str, node: Any, **kwargs: Any) -> Any:
    if node is None or (isinstance(node, DictConfig) and "_target_" not in node):
        return None
    return _build(key, node, **kwargs)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate ``cfg.data`` with the augmentation pipeline of ``cfg.augment``, then set it up for fitting."""
    transform = _maybe_instantiate("augment", cfg.get("augment"))
    dm = _build("data", cfg.data, **({"train_transform": transform} if transform is not None else {}))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_model(cfg: DictConfig, dm: Any) -> torch.nn.Module:
    """Instantiate ``cfg.model``, filling num_classes / in_channels / image_size from the DataModule."""
    dims = getattr(dm, "model_dims", dm.dims)  # what the model sees after preprocessing (PCA: a flat (k, 1, 1))
    values = {"num_classes": dm.num_classes, "in_channels": dims[0], "image_size": tuple(dims[1:])}
    accepted = _accepted_kwargs(get_object(cfg.model._target_))
    fill = {k: v for k, v in values.items() if (accepted is None or k in accepted) and k not in cfg.model}
    return _build("model", cfg.model, **fill)


def build_module(cfg: DictConfig, model: torch.nn.Module, dm: Any) -> pl.LightningModule:
    """Instantiate ``cfg.module`` around ``model`` with the optimizer/scheduler partials and the data preprocessor."""
    kwargs: dict[str, Any] = {"model": model}
    accepted = _accepted_kwargs(get_object(cfg.module._target_))
    if accepted is None or "preprocess" in accepted:
        kwargs["preprocess"] = getattr(dm, "preprocessor", None)
    if cfg.get("optimizer") is not None:
        kwargs["optimizer"] = _build("optimizer", cfg.optimizer)
    scheduler = _maybe_instantiate("scheduler", cfg.get("scheduler"))
    if scheduler is not None:
        kwargs["scheduler"] = scheduler
    return _build("module", cfg.module, **kwargs)


def _instantiate_dict(group: str, node: Any) -> list[Any]:
    """Every entry of a dict of components; an entry without ``_target_`` (``+callbacks.early_stopping.patience=5``
    without the early_stopping option) would build nothing and is refused."""
    if not node:
        return []
    for name, value in node.items():
        if isinstance(value, DictConfig) and "_target_" not in value:
            from lit_tricks.config_checks import ConfigError

            raise ConfigError([f"{group}.{name}={dict(value)!r}: no _target_, so nothing would be built; add the "
                               f"option first: '{group}=[default,{name}]' (or set {group}.{name}._target_)"])
    return [_build(f"{group}.{name}", v) for name, v in node.items() if v is not None]


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Instantiate every entry of the ``callbacks`` dict (null entries are off)."""
    return _instantiate_dict("callbacks", cfg.get("callbacks"))


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate every entry of the ``logger`` dict; an empty dict means no logger."""
    return _instantiate_dict("logger", cfg.get("logger"))
