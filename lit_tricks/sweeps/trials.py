"""The trials of a ``lit_optuna`` study: which count towards ``n_trials``, heartbeats, the work a rerun owes (an
unvisited grid point, a preempted trial to continue from its checkpoint), and the study as the sweep report sees it.

Needs the ``sweep`` extra (optuna >= 4); imported lazily by everything else of lit_tricks.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CONTINUES",
    "FAIL_REASON",
    "HEARTBEAT_KEY",
    "JOB_DIR",
    "JOB_STATUS",
    "RESUME_FROM",
    "STUDY_FILE",
    "claim_trial",
    "continuation",
    "continued_by",
    "duplicate_of",
    "fail_stale_trials",
    "is_active",
    "is_counted",
    "merge_study_trials",
    "next_grid_point",
    "record_heartbeat",
    "study_info",
]

log = logging.getLogger(__name__)

#: Written into the sweep directory by the sweeper: where the study lives (read by the report and the jobs).
STUDY_FILE = "optuna_study.json"
#: Trial user attributes set by the sweeper.
JOB_STATUS = "job_status"  # ok | failed | pruned: the job ran and ended so (a counted trial)
FAIL_REASON = "fail_reason"  # why a FAIL trial failed (the job's error, "interrupted", "surplus", ...)
JOB_DIR = "job_dir"
CONTINUES = "continues_trial"  # this trial continues the work of that (preempted) trial number
RESUME_FROM = "resume_from"  # ... from this checkpoint file
#: Trial system attribute of our own heartbeat (storages without Optuna's heartbeat: JournalStorage).
HEARTBEAT_KEY = "lit_tricks:heartbeat"


# --------------------------------------------------------------------------------------------------------- heartbeat


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


# --------------------------------------------------------------------------------------------------- trial counting


def is_counted(trial: FrozenTrial) -> bool:
    """A finished trial that counts towards ``n_trials``: complete, pruned, or failed in its job.

    Trials failed because their worker died (heartbeat), was interrupted, or asked one trial too many are not
    counted: a rerun replaces them (continues them from their checkpoint when they left one).
    """
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(JOB_STATUS) == "failed"


def is_active(trial: FrozenTrial) -> bool:
    """Running or waiting (enqueued) for a worker."""
    return trial.state in (TrialState.RUNNING, TrialState.WAITING)


def claim_trial(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` (just asked) is within ``n_trials``: fewer than ``n_trials`` counted or active
    trials precede it. Trial numbers are assigned atomically by the storage, so concurrent workers agree."""
    before = sum(1 for t in study.get_trials(deepcopy=False)
                 if t.number < number and (is_counted(t) or is_active(t)))
    return before < n_trials


# ----------------------------------------------------------------------------------------- the work a rerun owes


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)  # nan == nan


def _params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters; an enqueued trial that has not started yet holds them as ``fixed_params``."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})


def next_grid_point(grid: Mapping[str, Sequence[Any]], trials: Iterable[FrozenTrial]) -> dict[str, Any] | None:
    """The first point of ``grid`` (in grid order) that no counted or active trial covers, or None.

    Optuna's GridSampler counts every finished trial as a visited point, an interrupted one too: a resumed grid
    would never evaluate that point and evaluate another twice. Points are matched by their parameter values.
    """
    import itertools

    covered = [_params(t) for t in trials if is_counted(t) or is_active(t)]
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        point = dict(zip(names, values))
        if not any(_same(point, c) for c in covered):
            return point
    return None


def continued_by(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """Trial number -> the number of the (first) trial that continues it (a successor that was never launched,
    e.g. asked one too many, does not count: the work is still owed)."""
    out: dict[int, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        origin = t.user_attrs.get(CONTINUES)
        launched = is_counted(t) or is_active(t) or JOB_DIR in t.user_attrs
        if origin is not None and launched:
            out.setdefault(int(origin), t.number)
    return out


def continuation(trials: Sequence[FrozenTrial], checkpoint_of: Callable[[Path], str | None]
                 ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(params, user attributes) of a trial to enqueue that continues an interrupted trial's work, or None.

    An interrupted trial (FAIL, not counted: preempted, Ctrl-C, or its worker died) that left a training
    checkpoint in its job directory (``checkpoint_of(job_dir)``, e.g. ``last-preempted.ckpt``) and is not continued
    yet is continued by a new trial with the same parameters whose job resumes from that checkpoint. One that left
    none but itself continued another trial resumes from that trial's checkpoint again.
    """
    taken = continued_by(trials)
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.FAIL or is_counted(t) or t.number in taken or JOB_DIR not in t.user_attrs:
            continue
        ckpt = checkpoint_of(Path(t.user_attrs[JOB_DIR])) or t.user_attrs.get(RESUME_FROM)
        if ckpt and Path(ckpt).is_file() and t.params:
            return dict(t.params), {CONTINUES: t.number, RESUME_FROM: str(ckpt)}
    return None


def duplicate_of(trial: FrozenTrial, trials: Iterable[FrozenTrial], grid: bool) -> int | None:
    """The number of an earlier counted or active trial doing the same work as ``trial`` (two workers enqueued the
    same grid point or continuation at the same moment), or None. The lower number wins."""
    mine = trial.user_attrs.get(CONTINUES)
    for t in trials:
        if t.number >= trial.number or not (is_counted(t) or is_active(t)):
            continue
        if mine is not None and t.user_attrs.get(CONTINUES) == mine:
            return t.number
        if grid and mine is None and _same(_params(t), trial.params):
            return t.number
    return None


# ------------------------------------------------------------------------------------------ the report's side: study


def study_info(sweep_dir: str | Path) -> dict[str, Any] | None:
    """``optuna_study.json`` of a sweep directory (storage URL, study name, direction), or None."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not a JSON study file ({err})") from None
    if not isinstance(info, dict) or not isinstance(info.get("storage"), str) or not info.get("study_name"):
        raise ValueError(f"{path}: a study file holds {{'storage': <url>, 'study_name': <name>}}, got {info!r}")
    return info


_STATUS = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}

J = TypeVar("J")


def merge_study_trials(sweep_dir: str | Path, jobs: list[J], make: Callable[..., J]) -> list[J]:
    """The sweep's jobs completed by its Optuna study (when the sweep ran with ``lit_optuna``).

    A job's status follows its trial (pruned, failed with the reason, running; ``continued`` when a later trial
    continues its work from its checkpoint); trials without a job directory here (another worker's, or a worker
    killed before the job started) are added with ``make(num=..., dir=..., ...)``. Trials that never ran a job
    (asked one too many, interrupted before launch) are left out.
    """
    from lit_tricks.optuna_job import open_storage

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
    successors = continued_by(trials)
    out = list(jobs)
    for t in trials:
        status = _STATUS.get(t.state, t.state.name.lower())
        reason = t.user_attrs.get(FAIL_REASON)
        if t.state == TrialState.FAIL and JOB_STATUS not in t.user_attrs and reason is None:
            reason = "the worker stopped (heartbeat lost)"
        if t.state == TrialState.FAIL and not is_counted(t) and t.number in successors:
            status, reason = "continued", f"{reason}; continued by trial {successors[t.number]} from its checkpoint"
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
            error = reason if getattr(job, "status", None) == "missing" or status == "continued" else (
                getattr(job, "error", None) or reason)
            out[index] = replace(job, status=status, error=error)  # type: ignore[type-var]
    return out
