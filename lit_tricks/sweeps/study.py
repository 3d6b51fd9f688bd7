"""Optuna studies behind ``hydra/sweeper=lit_optuna``: samplers by name, the search space in Hydra's override
syntax, the rule that counts finished trials, heartbeats, and the study as the sweep report sees it. Storage URLs,
pruners and the running job's trial live in :mod:`lit_tricks.optuna_job` (the pruning callback needs them too).

Needs the ``sweep`` extra (optuna >= 4); imported lazily by everything else of lit_tricks.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from lit_tricks.optuna_job import (
    PRUNERS,
    build_pruner,
    current_trial,
    default_storage_url,
    open_storage,
    resolve_storage_url,
)
from lit_tricks.validation import DIRECTIONS

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
    "is_counted",
    "merge_study_trials",
    "open_storage",
    "override_value",
    "parse_search_space",
    "record_heartbeat",
    "resolve_storage_url",
    "study_info",
]

log = logging.getLogger(__name__)

#: Written into the sweep directory by the sweeper: where the study lives (read by the report and the jobs).
STUDY_FILE = "optuna_study.json"
#: Trial user attributes set by the sweeper.
JOB_STATUS = "job_status"  # ok | failed | pruned: the job ran and ended so (a counted trial)
FAIL_REASON = "fail_reason"  # why a FAIL trial failed (the job's root error, "interrupted", "surplus", ...)
JOB_DIR = "job_dir"
#: Trial system attribute of our own heartbeat (storages without Optuna's heartbeat: JournalStorage).
HEARTBEAT_KEY = "lit_tricks:heartbeat"

SAMPLERS = ("tpe", "random", "grid", "cmaes")
def direction_from_mode(mode: str) -> str:
    """``min``/``max`` (``monitor_mode``) or ``minimize``/``maximize`` -> Optuna's direction."""
    try:
        return DIRECTIONS[str(mode)]
    except KeyError:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {mode!r}") from None


# ----------------------------------------------------------------------------------------------------------- storage


def _optuna_heartbeat(storage: BaseStorage) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """Mark a running trial alive: Optuna's heartbeat where the storage has one, else a timestamp attribute."""
    if _optuna_heartbeat(storage):
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())


def fail_stale_trials(study: optuna.Study, grace_period: float | None) -> list[int]:
    """Fail RUNNING trials whose worker stopped beating for ``grace_period`` s; returns their numbers.

    RDB storages use Optuna's heartbeat (database time); other storages our timestamp attribute (one machine's
    clock, or a shared file system's machines with synchronised clocks).
    """
    if grace_period is None:
        return []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if _optuna_heartbeat(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            start = t.datetime_start.timestamp() if t.datetime_start is not None else now
            last = float(t.system_attrs.get(HEARTBEAT_KEY, start))
            if now - last > grace_period:
                try:
                    study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:  # another worker was quicker
                    continue
    stale = [t.number for t in study.get_trials(deepcopy=False)
             if t.number in before and t.state == TrialState.FAIL and JOB_STATUS not in t.user_attrs]
    for number in stale:
        log.warning("trial %d: its worker stopped (no heartbeat for %ss); recorded FAIL", number, grace_period)
    return stale


# ---------------------------------------------------------------------------------------------------- search space


def parse_search_space(params: Mapping[str, Any], arguments: Sequence[str] = ()
                       ) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Hydra's sweep syntax -> (Optuna distributions, fixed overrides).

    ``tag(log, interval(a, b))`` -> FloatDistribution(a, b, log=True) (``tag(int, ...)``: IntDistribution);
    ``range(a, b[, step])`` of ints -> IntDistribution(a, last, step), of floats -> categorical over its values;
    ``a,b,c`` / ``choice(a, b)`` -> CategoricalDistribution; a plain value -> a fixed override for every trial.
    ``params`` is the sweeper's ``params`` dict; ``arguments`` the command line's overrides (they win).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
            continue
        sweep: Any = override.value()
        tags = set(getattr(sweep, "tags", ()) or ())
        if isinstance(sweep, IntervalSweep):
            start, end = sweep.start, sweep.end
            if start is None or end is None:
                raise ValueError(f"{key}: {override.input_line!r} needs both ends of the interval")
            if "int" in tags:
                space[key] = IntDistribution(int(start), int(end), log="log" in tags)
            else:
                space[key] = FloatDistribution(float(start), float(end), log="log" in tags)
        elif isinstance(sweep, RangeSweep):
            values: list[Any] = list(override.sweep_iterator())
            step = sweep.step
            if values and all(isinstance(v, int) for v in values) and isinstance(step, int) and step > 0:
                space[key] = IntDistribution(values[0], values[-1], step=step, log="log" in tags and step == 1)
            else:
                space[key] = CategoricalDistribution(_choices(key, values))
        elif isinstance(sweep, ChoiceSweep):
            space[key] = CategoricalDistribution(_choices(key, list(override.sweep_iterator())))
        else:
            raise ValueError(f"{key}: {override.input_line!r} is not a search space lit_optuna knows "
                             "(interval, tag(log, interval), range, choice/a,b,c or a fixed value)")
    return space, list(fixed.values())


def _choices(key: str, values: list[Any]) -> tuple[Any, ...]:
    for v in values:
        if v is not None and not isinstance(v, bool | int | float | str):
            raise ValueError(f"{key}: choice values must be numbers, strings, bools or null, got {v!r}")
    if not values:
        raise ValueError(f"{key}: an empty choice/range")
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
            raise ValueError(f"sampler=grid needs choices or int ranges; {key} is {dist!r} (use a,b,c or range)")
    return grid


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
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if seed is None or name == "grid":  # the grid sampler's seed only shuffles the grid: keep one order
            return factory(seed)
        return TrialSeededSampler(factory, seed)


# --------------------------------------------------------------------------------------------------- trial counting


def is_counted(trial: FrozenTrial) -> bool:
    """A finished trial that counts towards ``n_trials``: complete, pruned, or failed in its job.

    Trials failed because their worker died (heartbeat), was interrupted, or asked one trial too many are not
    counted: a rerun replaces them.
    """
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(JOB_STATUS) == "failed"


def is_active(trial: FrozenTrial) -> bool:
    return trial.state in (TrialState.RUNNING, TrialState.WAITING)


def claim_trial(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` (just asked) is within ``n_trials``: fewer than ``n_trials`` counted or active
    trials precede it. Trial numbers are assigned atomically by the storage, so concurrent workers agree."""
    before = sum(1 for t in study.get_trials(deepcopy=False)
                 if t.number < number and (is_counted(t) or is_active(t)))
    return before < n_trials


# ------------------------------------------------------------------------------------------ the report's side: study


def study_info(sweep_dir: str | Path) -> dict[str, Any] | None:
    """``optuna_study.json`` of a sweep directory (storage URL, study name, direction), or None."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if isinstance(info, dict) else None


_STATUS = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}

J = TypeVar("J")


def merge_study_trials(sweep_dir: str | Path, jobs: list[J], make: Callable[..., J]) -> list[J]:
    """The sweep's jobs completed by its Optuna study (when the sweep ran with ``lit_optuna``).

    A job's status follows its trial (pruned, failed with the reason, running); trials without a job directory here
    (another worker's, or a worker killed before the job started) are added with ``make(num=..., dir=..., ...)``.
    Trials that never ran a job (asked one too many, interrupted before launch) are left out.
    """
    info = study_info(sweep_dir)
    if info is None:
        return jobs
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
        trials = study.get_trials(deepcopy=False)
    except Exception as err:  # a database that is down must not hide the job directories
        log.warning("sweep report: cannot read study %r: %s", info.get("study_name"), err)
        return jobs
    by_num: dict[int, J] = {int(j.num): j for j in jobs}  # type: ignore[attr-defined]
    out = list(jobs)
    for t in trials:
        status = _STATUS.get(t.state, t.state.name.lower())
        reason = t.user_attrs.get(FAIL_REASON)
        if t.state == TrialState.FAIL and JOB_STATUS not in t.user_attrs and reason is None:
            reason = "the worker stopped (heartbeat lost)"
        job = by_num.get(t.number)
        if job is None:
            if t.user_attrs.get(JOB_DIR) is None and t.state == TrialState.FAIL:
                continue  # never launched
            value = t.value if t.value is not None else math.nan
            out.append(make(num=t.number, dir=Path(t.user_attrs.get(JOB_DIR) or Path(sweep_dir) / str(t.number)),
                            params=dict(t.params), status=status, objective=float(value), error=reason))
            continue
        if getattr(job, "status", None) != status and status != "ok":
            index = out.index(job)
            error = reason if getattr(job, "status", None) == "missing" else getattr(job, "error", None) or reason
            out[index] = replace(job, status=status, error=error)  # type: ignore[type-var]
    return out
