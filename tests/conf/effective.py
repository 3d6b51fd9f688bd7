"""What a composed config hands to each constructor: every ``_target_`` node as its callee's full argument list.

A node's *effective arguments* are the callee's signature defaults updated with the keys the config sets, so a key
that moves from a YAML preset into the code's signature (or back) leaves them unchanged. ``record_before.py`` wrote
``effective_before.json`` with this module on the commit before the presets were trimmed; ``test_effective.py``
compares today's values with it.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
FIXTURE = Path(__file__).with_name("effective_before.json")
#: Fixed paths, so values that interpolate them compare equal on any machine.
PATHS = ["paths.output_dir=/OUT", "paths.log_dir=/LOGS", "paths.data_dir=/DATA"]
#: Groups whose every option is recorded (composed alone on top of train.yaml).
GROUPS = ["data", "model", "module", "optimizer", "scheduler", "augment", "callbacks", "trainer", "logger"]


def cases() -> dict[str, list[str]]:
    """Name -> overrides: the default train config, every experiment and every option of the GROUPS."""
    out: dict[str, list[str]] = {"train": []}
    out.update({f"experiment={p.stem}": [f"experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))})
    for group in GROUPS:
        out.update({f"{group}={p.stem}": [f"{group}={p.stem}"] for p in sorted((CONF / group).glob("*.yaml"))})
    return out


def _name(obj: Any) -> str:
    """``<top-level package>:<qualname>``: stable when an object moves between modules of its package."""
    return f"{str(getattr(obj, '__module__', '?')).split('.')[0]}:{getattr(obj, '__qualname__', repr(obj))}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if callable(value):
        return _name(value)
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def effective(node: Any) -> Any:
    """``node`` with every ``_target_`` dict replaced by its callee's name and full effective argument list."""
    if isinstance(node, list):
        return [effective(v) for v in node]
    if not isinstance(node, dict):
        return _plain(node)
    values = {k: effective(v) for k, v in node.items()}
    if "_target_" not in node:
        return values
    obj = get_object(str(node["_target_"]))
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]
    out = {p.name: _plain(p.default) for p in params
           if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}
    out.update({k: v for k, v in values.items() if not k.startswith("_")})
    out["_target_"] = _name(obj)
    out.update({k: v for k, v in values.items() if k.startswith("_") and k != "_target_"})
    return dict(sorted(out.items()))


@functools.cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    """``train.yaml`` composed with :data:`PATHS` and ``overrides`` (cached: read it, do not change it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*PATHS, *overrides])
    OmegaConf.set_readonly(cfg, True)
    return cfg


def compose_effective(overrides: list[str]) -> dict[str, Any]:
    """The effective arguments of ``train.yaml`` composed with ``overrides`` (hydra's own node left out)."""
    container = OmegaConf.to_container(composed(tuple(overrides)), resolve=True)
    assert isinstance(container, dict)
    return effective(container)  # type: ignore[no-any-return]
