"""Start-up validation of a composed training config: every problem found at once, one readable line each."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The allowed values live with the code that uses them (one source each).
from lit_tricks.data.preprocessing import PREPROCESSING
from lit_tricks.hydra_utils import hydra_config
from lit_tricks.migrate import old_target_problems
from lit_tricks.modules.surgery import INIT_SCHEMES, NORM_KINDS
from lit_tricks.validation import DIRECTIONS, is_number, number_problem

__all__ = ["ConfigError", "SweepConfigError", "check_config", "check_norm_groups"]

#: DataModule targets whose data lives on disk under ``data_dir`` (digits ships inside scikit-learn).
DISK_DATAMODULES = ("MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule")


class ConfigError(ValueError):
    """A composed config has invalid values; ``problems`` lists one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")


class SweepConfigError(ConfigError):
    """A problem that every job of a sweep would have (e.g. the sweeper's direction against ``monitor_mode``):
    the sweep is refused at its first job instead of recording each job as failed."""


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
    "optimizer.lr": _number(0.0, lo_open=True),  # null is refused below (every optimizer needs an lr)
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


def _relation_problems(cfg: DictConfig) -> list[str]:
    """Problems of keys that are fine alone but not together."""
    problems: list[str] = []
    if "lr" in (_get(cfg, "optimizer") or {}) and _get(cfg, "optimizer.lr") is None:
        problems.append("optimizer.lr=None: must be a number in (0, inf)")
    warmup, epochs = _get(cfg, "scheduler.warmup_epochs"), _get(cfg, "trainer.max_epochs")
    # A warm-up a bit longer than a smoke run (warmup_epochs=2 with max_epochs=1) is fine; one the run never gets
    # half way through leaves the lr below half its base value for the whole run.
    if is_number(warmup) and is_number(epochs) and epochs > 0 and warmup > 2 * epochs:
        problems.append(f"scheduler.warmup_epochs={warmup!r}: more than twice trainer.max_epochs={epochs!r} "
                        "(the lr would never reach half its base value); shorten the warm-up")
    callbacks = _get(cfg, "callbacks") or {}
    clippers = [k for k, v in callbacks.items()
                if isinstance(v, DictConfig) and str(v.get("_target_", "")).endswith("GradientClipping")]
    if clippers and _get(cfg, "trainer.gradient_clip_val") not in (None, 0, 0.0):
        problems.append(f"trainer.gradient_clip_val={_get(cfg, 'trainer.gradient_clip_val')!r}: clipping twice; "
                        f"callbacks.{clippers[0]} already clips (set its max_norm, or remove one of the two)")
    if _get(cfg, "trainer.sync_batchnorm") and _get(cfg, "trainer.accelerator") == "cpu":
        problems.append("trainer.sync_batchnorm=True: needs GPUs (SyncBatchNorm is a CUDA-only layer in torch); "
                        "with trainer.accelerator=cpu set it false (use trainer=ddp on GPUs)")
    return problems


def _direction_problem(cfg: DictConfig) -> str | None:
    """The Optuna sweeper's direction must agree with ``monitor_mode`` (min -> minimize, max -> maximize)."""
    hc = hydra_config()
    sweeper = hc.sweeper if hc is not None else None
    direction = sweeper.get("direction") if sweeper is not None else None
    if isinstance(direction, list | tuple) or (direction is not None and not isinstance(direction, str)):
        direction = next(iter(direction), None)
    mode = _get(cfg, "monitor_mode")
    expected = DIRECTIONS.get(str(mode)) if str(mode) in ("min", "max") else None
    direction = DIRECTIONS.get(str(direction), direction)  # lit_optuna's min/max aliases
    if direction is None or expected is None or str(direction) == expected:
        return None
    return (f"hydra.sweeper.direction={direction}: disagrees with monitor_mode={mode} "
            f"(monitor={_get(cfg, 'monitor')}); set hydra.sweeper.direction={expected}")


def check_norm_groups(norm: Any, model: Any) -> None:
    """Raise :class:`ConfigError` when ``module.norm=group:<n>`` does not divide every normalized channel count."""
    if isinstance(norm, DictConfig | dict):
        kind, groups = norm.get("kind"), norm.get("num_groups", 32)
    elif isinstance(norm, str) and norm.startswith("group"):
        kind, _, rest = norm.partition(":")
        groups = int(rest) if rest.isdigit() else 32
    else:
        return
    if kind != "group":
        return
    import torch.nn as nn

    channels = sorted({m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
                      | {m.num_channels for m in model.modules() if isinstance(m, nn.GroupNorm)})
    bad = [c for c in channels if c % groups]
    if bad:
        raise ConfigError([f"module.norm={norm!r}: {groups} groups must divide the channel counts {bad} of the "
                           f"model's norm layers (channels: {channels})"])


def check_config(cfg: DictConfig, extra_rules: Iterable[tuple[str, Callable[[Any], str | None]]] = ()) -> None:
    """Raise :class:`ConfigError` listing every bad value of ``cfg`` (key, value received, what is allowed)."""
    problems = old_target_problems(cfg)
    if problems:  # nothing else can be checked on a config that does not instantiate
        raise ConfigError(problems)
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
    problems += _relation_problems(cfg)
    direction = _direction_problem(cfg)
    if direction:
        raise SweepConfigError([direction, *problems])
    if problems:
        raise ConfigError(problems)
