"""Start-up validation of a composed training config: every problem found at once, one readable line each."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The allowed values live with the code that uses them (one source each).
from lit_tricks.data.preprocessing import PREPROCESSING
from lit_tricks.modules.surgery import INIT_SCHEMES, NORM_KINDS
from lit_tricks.validation import number_problem

__all__ = ["ConfigError", "check_config"]

#: DataModule targets whose data lives on disk under ``data_dir`` (digits ships inside scikit-learn).
DISK_DATAMODULES = ("MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule")


class ConfigError(ValueError):
    """A composed config has invalid values; ``problems`` lists one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _number(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True,
            integer: bool = False) -> Callable[[Any], str | None]:
    return lambda v: number_problem(v, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)


def _norm(v: Any) -> str | None:
    if isinstance(v, DictConfig | dict):
        kind = v.get("kind")
    elif isinstance(v, str):
        kind = v.split(":", 1)[0]
        if kind == "group" and ":" in v and not v.split(":", 1)[1].isdigit():
            return "group shorthand is 'group:<num_groups>', e.g. group:8"
    else:
        return f"must be one of {list(NORM_KINDS)} (or group:<n>)"
    return None if kind in NORM_KINDS else f"must be one of {list(NORM_KINDS)} (or group:<n>)"


def _init(v: Any) -> str | None:
    name = v.get("scheme") if isinstance(v, DictConfig | dict) else v
    return None if name in INIT_SCHEMES else f"must be one of {list(INIT_SCHEMES)}"


def _dropout(v: Any) -> str | None:
    if v is None:
        return None
    return _number(0.0, 1.0)(v)


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"must be one of {list(allowed)}"


#: key -> check(value) returning an error text or None. Absent keys are not checked.
RULES: dict[str, Callable[[Any], str | None]] = {
    "optimizer.lr": _number(0.0, lo_open=True),
    "optimizer.momentum": _number(0.0, 1.0),
    "module.weight_decay": _number(0.0),
    "module.l1": _number(0.0),
    "module.jacobian_reg": _number(0.0),
    "module.label_smoothing": _number(0.0, 1.0),
    "module.dropout": _dropout,
    "module.norm": _norm,
    "module.init": _init,
    "data.batch_size": _number(1, integer=True),
    "data.num_workers": _number(0, integer=True),
    "data.split_seed": _number(0, integer=True),
    "data.preprocessing": _choice(tuple(PREPROCESSING)),
    "trainer.max_epochs": _number(-1, integer=True),
    "seed": _number(0, integer=True),
    "optimizer.weight_decay": lambda v: (
        None if v == 0 else "set module.weight_decay instead (decay is applied through parameter groups)"
    ),
}


def _data_dir_problem(cfg: DictConfig) -> str | None:
    target = str(_get(cfg, "data._target_") or "")
    if not target.endswith(DISK_DATAMODULES):
        return None
    data_dir = _get(cfg, "data.data_dir")
    if data_dir is None or not Path(str(data_dir)).is_dir():
        return (f"data.data_dir={data_dir!r}: directory not found; {target.rsplit('.', 1)[-1]} reads its files "
                "from there (download=False) - set data.data_dir=/path/to/dataset")
    return None


def check_config(cfg: DictConfig, extra_rules: Iterable[tuple[str, Callable[[Any], str | None]]] = ()) -> None:
    """Raise :class:`ConfigError` listing every bad value of ``cfg`` (key, value received, what is allowed)."""
    problems: list[str] = []
    for key, rule in [*RULES.items(), *extra_rules]:
        try:
            value = _get(cfg, key)
        except Exception as err:  # an interpolation that does not resolve
            problems.append(f"{key}: cannot be resolved ({err})")
            continue
        if value is None and key != "module.dropout":
            continue
        message = rule(value)
        if message:
            problems.append(f"{key}={value!r}: {message}")
    data_problem = _data_dir_problem(cfg)
    if data_problem:
        problems.append(data_problem)
    if problems:
        raise ConfigError(problems)
