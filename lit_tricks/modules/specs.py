"""Plain, Hydra-like specs of the optimizer/scheduler partials, so checkpoints hold only plain types.

``callable_to_spec(partial(SGD, lr=0.1))`` -> ``{"_target_": "torch.optim.sgd.SGD", "lr": 0.1, "_partial_": True}``
and :func:`callable_from_spec` rebuilds the partial: TrickModule's hyperparameters load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.hydra_utils import to_plain

__all__ = [
    "PREPROCESS_KEY", "as_factory", "callable_from_spec", "callable_to_spec", "plain", "restored_preprocess",
    "save_preprocess_class", "scheduler_config",
]

#: Checkpoint key holding the import path of the preprocessing module's class.
PREPROCESS_KEY = "lit_tricks_preprocess"


def plain(value: Any) -> Any:
    """``value`` as plain Python types (OmegaConf containers, tuples and tensors converted), for checkpoints."""
    if isinstance(value, functools.partial) or (callable(value) and hasattr(value, "__qualname__")):
        return callable_to_spec(value)
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {str(k): plain(value[k]) for k in value.keys()}  # DictConfig too
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Sequence) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


def callable_to_spec(obj: Any) -> dict[str, Any]:
    """A Hydra-like plain dict describing a partial/class/function: ``{"_target_": ..., "_partial_": True, **kw}``."""
    if isinstance(obj, functools.partial):
        spec = callable_to_spec(obj.func)
        if obj.args:
            spec["_args_"] = plain(list(obj.args))
        spec.update({k: plain(v) for k, v in obj.keywords.items()})
        spec["_partial_"] = True
        return spec
    return {"_target_": f"{obj.__module__}.{obj.__qualname__}"}


def callable_from_spec(spec: Mapping[str, Any]) -> Callable[..., Any]:
    """Inverse of :func:`callable_to_spec` (nested partial specs rebuilt too)."""
    spec = dict(spec)
    target = spec.pop("_target_", None)
    if not isinstance(target, str):
        raise ValueError(f"a callable spec needs a '_target_' import path, got {spec!r}")
    spec.pop("_partial_", None)
    args = spec.pop("_args_", [])
    module_name, _, attr = target.rpartition(".")
    fn: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        fn = getattr(fn, part)
    kwargs = {k: callable_from_spec(v) if isinstance(v, Mapping) and "_target_" in v else v for k, v in spec.items()}
    return functools.partial(fn, *args, **kwargs) if (args or kwargs) else functools.partial(fn)


def as_factory(value: Any, name: str) -> Callable[..., Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping) or (hasattr(value, "keys") and "_target_" in value):
        return callable_from_spec(plain(value))
    if isinstance(value, functools.partial):  # Hydra passes ListConfig/DictConfig kwargs: make them plain
        return functools.partial(value.func, *value.args, **{k: to_plain(v) for k, v in value.keywords.items()})
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"{name} must be a partial/callable taking the {'params' if name == 'optimizer' else 'optimizer'}"
                    f" (Hydra _partial_: true), a spec dict with '_target_', or None; got {type(value).__name__}")


def scheduler_config(factory: Callable[..., Any], optimizer: torch.optim.Optimizer, trainer: Any,
                     interval: str | None) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict for ``factory(optimizer)``: from ``lit_tricks.schedules.lr_scheduler_config``
    when importable (plain torch schedulers need none of it: per epoch, ReduceLROnPlateau on ``val/loss``); an
    ``interval`` ("step" | "epoch") overrides the one chosen."""
    try:
        lr_scheduler_config = getattr(importlib.import_module("lit_tricks.schedules"), "lr_scheduler_config", None)
    except ImportError:
        lr_scheduler_config = None
    if lr_scheduler_config is not None:
        config = dict(lr_scheduler_config(factory, optimizer, trainer))
    else:
        scheduler = factory(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
    if interval is not None:
        config["interval"] = interval
    return config


def save_preprocess_class(preprocess: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Put the import path of ``preprocess``'s class (a plain string) into ``checkpoint``, unless it is Identity."""
    if not isinstance(preprocess, nn.Identity):
        cls = type(preprocess)
        checkpoint[PREPROCESS_KEY] = f"{cls.__module__}.{cls.__qualname__}"


def restored_preprocess(preprocess: nn.Module, checkpoint: dict[str, Any]) -> nn.Module:
    """The preprocessing module to load ``checkpoint``'s statistics into: ``preprocess`` when given (not Identity) or
    when the checkpoint has none, else one rebuilt from its saved class (constructor without arguments)."""
    has_stats = any(k.startswith("preprocess.") for k in checkpoint.get("state_dict", {}))
    if not has_stats or not isinstance(preprocess, nn.Identity):
        return preprocess
    target = checkpoint.get(PREPROCESS_KEY)
    try:
        return callable_from_spec({"_target_": target})()  # type: ignore[no-any-return]
    except Exception as err:
        raise ValueError(f"preprocess: this checkpoint carries input preprocessing statistics ({target}); pass "
                         "preprocess=<an instance of that class> to load_from_checkpoint") from err
