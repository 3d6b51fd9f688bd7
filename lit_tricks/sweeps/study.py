"""Optuna studies behind ``hydra/sweeper=lit_optuna``: the search space in Hydra's override syntax and samplers by
name. Which trials count, heartbeats, the work a rerun owes and the report's view of a study live in
:mod:`lit_tricks.sweeps.trials` (re-exported here); storage URLs, pruners and the running job's trial in
:mod:`lit_tricks.optuna_job` (the pruning callback needs them too).

Needs the ``sweep`` extra (optuna >= 4); imported lazily by everything else of lit_tricks.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from lit_tricks.optuna_job import (
    PRUNERS,
    build_pruner,
    current_trial,
    default_storage_url,
    open_storage,
    resolve_storage_url,
)
from lit_tricks.sweeps.trials import (
    FAIL_REASON,
    HEARTBEAT_KEY,
    JOB_DIR,
    JOB_STATUS,
    STUDY_FILE,
    claim_trial,
    fail_stale_trials,
    is_active,
    is_counted,
    merge_study_trials,
    record_heartbeat,
    study_info,
)
from lit_tricks.validation import DIRECTIONS, ArgumentError

__all__ = [
    "DIRECTIONS",
    "FAIL_REASON",
    "HEARTBEAT_KEY",
    "JOB_DIR",
    "JOB_STATUS",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_FILE",
    "TrialSeededSampler",
    "build_pruner",
    "build_sampler",
    "claim_trial",
    "current_trial",
    "default_storage_url",
    "direction_from_mode",
    "fail_stale_trials",
    "grid_search_space",
    "is_active",
    "is_counted",
    "merge_study_trials",
    "open_storage",
    "override_value",
    "parse_search_space",
    "record_heartbeat",
    "resolve_storage_url",
    "study_info",
]

SAMPLERS = ("tpe", "random", "grid", "cmaes")


def direction_from_mode(mode: str) -> str:
    """``min``/``max`` (``monitor_mode``) or ``minimize``/``maximize`` -> Optuna's direction."""
    if str(mode) not in DIRECTIONS:
        raise ArgumentError("hydra.sweeper.direction", mode, f"must be one of {sorted(DIRECTIONS)}")
    return DIRECTIONS[str(mode)]


# ---------------------------------------------------------------------------------------------------- search space


def parse_search_space(params: Mapping[str, Any], arguments: Sequence[str] = ()
                       ) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Hydra's sweep syntax -> (Optuna distributions, fixed overrides).

    ``tag(log, interval(a, b))`` -> FloatDistribution(a, b, log=True) (``tag(int, ...)``: IntDistribution);
    ``range(a, b[, step])`` of ints -> IntDistribution(a, last, step), of floats -> categorical over its values;
    ``a,b,c`` / ``choice(a, b)`` -> CategoricalDistribution; a plain value -> a fixed override for every trial.
    ``params`` is the sweeper's ``params`` dict; ``arguments`` the command line's overrides (they win). A space
    Optuna cannot sample (a reversed interval, a log interval reaching 0, an empty choice) raises
    :class:`~lit_tricks.validation.ArgumentError` naming the key and its text.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    lines = [(f"hydra.sweeper.params.{key}", f"{key}={value}") for key, value in params.items()]
    for name, line in lines + [(str(a).split("=", 1)[0], str(a)) for a in arguments]:
        try:
            override = parser.parse_override(line)
        except OverrideParseException as err:
            raise ArgumentError(name, line.split("=", 1)[-1], f"is not a Hydra override ({err})") from None
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
            continue
        try:
            space[key] = _distribution(override)
        except (TypeError, ValueError) as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ArgumentError(name, line.split("=", 1)[-1], f"is not a search space Optuna can sample: {text}"
                                ) from None
    return space, list(fixed.values())


def _distribution(override: Any) -> BaseDistribution:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep: Any = override.value()
    tags = set(getattr(sweep, "tags", ()) or ())
    if isinstance(sweep, IntervalSweep):
        start, end = sweep.start, sweep.end
        if start is None or end is None:
            raise ValueError("needs both ends of the interval")
        if float(start) > float(end):
            raise ValueError(f"low {start} > high {end} (write interval(low, high))")
        if "int" in tags:
            return IntDistribution(int(start), int(end), log="log" in tags)
        return FloatDistribution(float(start), float(end), log="log" in tags)
    if isinstance(sweep, RangeSweep):
        values: list[Any] = list(override.sweep_iterator())
        step = sweep.step
        if values and all(isinstance(v, int) for v in values) and isinstance(step, int) and step > 0:
            return IntDistribution(values[0], values[-1], step=step, log="log" in tags and step == 1)
        return CategoricalDistribution(_choices(values))
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(_choices(list(override.sweep_iterator())))
    raise ValueError("lit_optuna knows interval, tag(log, interval), range, choice / a,b,c or a fixed value")


def _choices(values: list[Any]) -> tuple[Any, ...]:
    for v in values:
        if v is not None and not isinstance(v, bool | int | float | str):
            raise ValueError(f"choice values must be numbers, strings, bools or null, got {v!r}")
    if not values:
        raise ValueError("an empty choice/range")
    return tuple(values)


def grid_search_space(space: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """The grid of a search space of choices and int ranges (GridSampler's input); intervals are refused."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ArgumentError("hydra.sweeper.sampler", "grid", f"needs choices or int ranges, but {key} is "
                                f"{_describe(dist)} (sample it with tpe/random, or list its values: a,b,c)")
    return grid


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, FloatDistribution | IntDistribution):
        kind = "int interval" if isinstance(dist, IntDistribution) else "interval"
        return f"the {'log ' if dist.log else ''}{kind} [{dist.low}, {dist.high}]"
    return repr(dist)


_PLAIN = re.compile(r"^[A-Za-z0-9_./:+\-@]+$")


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text (strings quoted unless plain)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if isinstance(value, str) and not _PLAIN.match(text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


# ------------------------------------------------------------------------------------------------ samplers, pruners


class TrialSeededSampler(BaseSampler):
    """Rebuild the sampler before every trial with a seed drawn from (seed, trial number).

    A seeded sampler otherwise replays the same random draws in every process: a resumed study or a second worker
    would propose the first run's trials again. Per trial number, every trial's draws differ and a rerun of the same
    history proposes the same trial. Seed formula: ``numpy.random.SeedSequence([seed, number]).generate_state(1)``.
    """

    def __init__(self, factory: Callable[[int | None], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = int(seed)
        self._current = factory(self._seed)

    def _rebuild(self, number: int) -> None:
        import numpy as np

        seed = int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._current = self._factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._rebuild(trial.number)
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def build_sampler(name: str, seed: int | None, space: Mapping[str, BaseDistribution],
                  kwargs: Mapping[str, Any] | None = None) -> BaseSampler:
    """A sampler by name (``tpe``, ``random``, ``grid``, ``cmaes``) with its keyword arguments, seeded per trial."""
    kw = dict(kwargs or {})
    name = str(name).lower()
    if name == "tpe":
        kw.setdefault("constant_liar", True)  # concurrent trials (n_jobs, workers) do not all go to one spot

        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.TPESampler(seed=s, **kw)
    elif name == "random":
        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.RandomSampler(seed=s, **kw)
    elif name == "grid":
        grid = grid_search_space(space)

        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.GridSampler(grid, seed=s, **kw)
    elif name in ("cmaes", "cma-es", "cma_es"):
        def factory(s: int | None) -> BaseSampler:
            return optuna.samplers.CmaEsSampler(seed=s, **kw)
    else:
        raise ArgumentError("hydra.sweeper.sampler", name, f"must be one of {list(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if seed is None or name == "grid":  # the grid sampler's seed only shuffles the grid: keep one order
                return factory(seed)
            return TrialSeededSampler(factory, seed)
        except (TypeError, ValueError) as err:  # an argument the sampler does not take, or a bad value
            raise ArgumentError("hydra.sweeper.sampler_kwargs", dict(kwargs or {}),
                                f"rejected by sampler={name}: {str(err).strip().splitlines()[0]}") from None


