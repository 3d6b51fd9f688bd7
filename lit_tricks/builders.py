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
from omegaconf import DictConfig, OmegaConf

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
    """``instantiate(node)``; a constructor that refuses its config (``ArgumentError``, ``ValueError``,
    ``TypeError``) raises ``ArgumentError`` naming ``key`` (its argument, or the command-line overrides that set the
    node), which ``lit_tricks.run`` reports as a rejected config (one line, no run left behind). Any other error
    (a ``RuntimeError`` of a constructor) is raised as it is: the run failed."""
    from hydra.errors import InstantiationException

    from lit_tricks.hydra_utils import hydra_config
    from lit_tricks.validation import ArgumentError, arg_key

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        root: BaseException = err
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, ArgumentError):
            raise ArgumentError(arg_key(key, root, node), root.value, root.problem) from err
        if not isinstance(root, ValueError | TypeError):
            raise
        hc = hydra_config()
        mine = [o for o in (hc.overrides.task if hc is not None else []) if o.lstrip("+~").startswith(key)]
        line = f"{type(root).__name__}: {str(root).strip().splitlines()[0]}" if str(root).strip() else repr(root)
        preset = hc.runtime.choices.get(key) if hc is not None else None  # e.g. module=trick, when no override
        value = " ".join(mine) or (f"{key}={preset}" if preset else "its config")
        raise ArgumentError(key, value, f"cannot be built ({line})") from err


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


def _check_flat_input(cfg: DictConfig, dm: Any, target: Any) -> None:
    """Refuse, in one line, one of our image/signal/sequence models after a preprocessor with a flat output (PCA)."""
    from lit_tricks.models import ConvNet1d, GRU1d, SmallCNN, torchvision_model
    from lit_tricks.validation import ArgumentError

    if not getattr(getattr(dm, "preprocessor", None), "flat_output", False):
        return
    if target in (SmallCNN, ConvNet1d, GRU1d, torchvision_model):
        kind = OmegaConf.select(cfg, "data.preprocessing", default="pca")
        raise ArgumentError("data.preprocessing", kind, f"outputs a flat vector of {dm.model_dims[0]} principal "
                            f"components per sample, which model={cfg.model._target_} (an image/signal model) cannot "
                            f"take: use model=mlp, mlp_mnist1d or logreg_mnist1d, or data.preprocessing=zca")


def build_model(cfg: DictConfig, dm: Any) -> torch.nn.Module:
    """Instantiate ``cfg.model``, filling num_classes / in_channels / image_size from the DataModule."""
    dims = getattr(dm, "model_dims", dm.dims)  # what the model sees after preprocessing (PCA: a flat (k, 1, 1))
    values = {"num_classes": dm.num_classes, "in_channels": dims[0], "image_size": tuple(dims[1:])}
    _check_flat_input(cfg, dm, get_object(cfg.model._target_))
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
            from lit_tricks.validation import ArgumentError

            raise ArgumentError(f"{group}.{name}", dict(value), f"has no _target_, so nothing would be built; add "
                                f"the option first: '{group}=[default,{name}]' (or set {group}.{name}._target_)")
    return [_build(f"{group}.{name}", v) for name, v in node.items() if v is not None]


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Instantiate every entry of the ``callbacks`` dict (null entries are off)."""
    return _instantiate_dict("callbacks", cfg.get("callbacks"))


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate every entry of the ``logger`` dict; an empty dict means no logger."""
    return _instantiate_dict("logger", cfg.get("logger"))
