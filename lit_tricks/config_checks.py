"""Start-up validation of a composed training config: every problem found at once, one readable line each.

One design (:mod:`lit_tricks.validation`): each component checks its own arguments; :func:`check_config` walks the
composed config and lets each component check its own node, before anything is built for real or written: the
DataModule, the augmentation, every callback and the optimizer and schedule partials are constructed (their
constructors check); a module class with a ``check_config`` classmethod (TrickModule) checks the arguments that
do not depend on the model (what does is refused when the module is built around the real model); the Trainer's
arguments go through :func:`lit_tricks.trainers.build.check_trainer_args`. An
:class:`~lit_tricks.validation.ArgumentError` becomes ``<config key>.<arg>=<value>: <problem>``, another
``ValueError``/``TypeError`` of a constructor ``<config key>: <its message>``. Kept here are only the rules that span
several components (or keys), the run's own ``seed``, and the optimizer's ``lr`` and ``momentum``, which torch's
optimizers accept at values no run should have (lr=0 never moves, momentum >= 1 diverges).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_tricks.hydra_utils import hydra_config
from lit_tricks.migrate import old_target_problems
from lit_tricks.validation import DIRECTIONS, ArgumentError, ArgumentErrors, arg_key, is_number, number_problem

__all__ = ["ConfigError", "SweepConfigError", "check_config", "check_norm_groups"]

#: DataModule targets whose data lives on disk under ``data_dir`` (digits ships inside scikit-learn).
DISK_DATAMODULES = ("MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule")
#: Steps handed to a schedule built at start-up: large enough for any warm-up or cycle a real run could have.
_STAND_IN_STEPS = {"total_steps": 10**9, "steps_per_epoch": 10**6}


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


#: The run's own keys, and the two optimizer arguments torch's optimizers accept although no run should have them
#: (lr=0 never moves, momentum >= 1 diverges): key -> check(value) returning what is allowed, or None.
RULES: dict[str, Callable[[Any], str | None]] = {
    "optimizer.lr": lambda v: number_problem(v, 0.0, lo_open=True),  # null is refused below
    "optimizer.momentum": lambda v: number_problem(v, 0.0, 1.0),
    "seed": lambda v: number_problem(v, 0, integer=True),
}


def _root(err: BaseException) -> BaseException:
    """The error a constructor raised, out of Hydra's InstantiationException wrappers."""
    while type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    return err


def _lines(key: str, err: BaseException, node: Any = None) -> list[str]:
    """``err`` of the component at ``key`` (config ``node``) as config lines (empty when it is not about the
    arguments). An argument of a nested mapping (the error's ``owner`` is a mapping key of ``node``: ``norm`` of
    ``module.norm={kind: batch, layers: [...]}``) is named under it."""
    err = _root(err)
    if isinstance(err, ArgumentErrors):
        return [line for e in err.errors for line in _lines(key, e, node)]
    if isinstance(err, ArgumentError):
        return [f"{arg_key(key, err, node)}={err.value!r}: {err.problem}"]
    if isinstance(err, ValueError | TypeError | ImportError):
        return [f"{key}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"]
    return []  # e.g. a missing optional package: the run reports it when it builds the part


def _stand_in_steps(factory: Any) -> dict[str, int]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in _STAND_IN_STEPS.items() if k in params and k not in getattr(factory, "keywords", {})}


def _component_checks(cfg: DictConfig, skip: set[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(config key, a call that builds the component cheaply and so lets it check its own arguments)."""
    import torch
    from hydra.utils import get_object, instantiate

    def has_target(node: Any) -> bool:
        return isinstance(node, DictConfig) and "_target_" in node

    param = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = cfg.get("optimizer") if "optimizer" not in skip and has_target(cfg.get("optimizer")) else None
    for key in ("data", "augment"):
        if key not in skip and has_target(cfg.get(key)):
            yield key, functools.partial(instantiate, cfg[key])
    if optimizer is not None:
        yield "optimizer", lambda: instantiate(optimizer)(param)
    scheduler = cfg.get("scheduler")
    if has_target(scheduler):
        def build_scheduler() -> Any:
            factory = instantiate(scheduler)
            return factory(torch.optim.SGD(param, lr=0.1), **_stand_in_steps(factory))
        yield "scheduler", build_scheduler
    if has_target(cfg.get("module")):
        def build_module() -> Any:
            check = getattr(get_object(str(cfg.module._target_)), "check_config", None)
            if check is None:  # a LightningModule of the user's: built around the real model by the run
                return None
            kwargs = OmegaConf.to_container(cfg.module, resolve=True)
            assert isinstance(kwargs, dict)
            return check({k: v for k, v in kwargs.items() if not str(k).startswith("_")},
                         instantiate(optimizer) if optimizer is not None else None)
        yield "module", build_module
    for name, node in (cfg.get("callbacks") or {}).items():
        if has_target(node):
            yield f"callbacks.{name}", functools.partial(instantiate, node)
    if isinstance(cfg.get("trainer"), DictConfig):
        from lit_tricks.trainers.build import check_trainer_args

        yield "trainer", lambda: check_trainer_args(OmegaConf.to_container(cfg.trainer, resolve=True))  # type: ignore[arg-type]


def _component_problems(cfg: DictConfig, skip: set[str]) -> list[str]:
    problems: list[str] = []
    for key, build in _component_checks(cfg, skip):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. init of the stand-in's empty layer
                build()
        except Exception as err:  # each component's own message, with its config key
            problems += _lines(key, err, OmegaConf.select(cfg, key))
    return problems


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
    """Problems of keys of several components that are fine alone but not together."""
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


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every bad value of ``cfg`` (key, value received, what is allowed)."""
    problems = old_target_problems(cfg)
    if problems:  # nothing else can be checked on a config that does not instantiate
        raise ConfigError(problems)
    for key, rule in RULES.items():
        try:
            value = _get(cfg, key)
        except Exception as err:  # an interpolation that does not resolve
            problems.append(f"{key}: cannot be resolved ({err})")
            continue
        message = None if value is None else rule(value)
        if message:
            problems.append(f"{key}={value!r}: {message}")
    skip = {p.split(".", 1)[0] for p in problems}  # a part already refused by a rule is not built
    data_problem = _data_dir_problem(cfg)
    if data_problem:
        problems.append(data_problem)
        skip.add("data")
    problems += _relation_problems(cfg)
    if "optimizer" in {p.split(".", 1)[0] for p in problems}:
        skip.add("optimizer")
    problems += _component_problems(cfg, skip)
    direction = _direction_problem(cfg)
    if direction:
        raise SweepConfigError([direction, *problems])
    if problems:
        raise ConfigError(problems)

