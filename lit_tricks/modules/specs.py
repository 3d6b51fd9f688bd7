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

from torch import Tensor

from lit_tricks.hydra_utils import to_plain

__all__ = ["as_factory", "callable_from_spec", "callable_to_spec", "plain"]


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
