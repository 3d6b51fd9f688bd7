"""One batch of a ``lit_optuna`` sweep: ask a trial and sample it, keep the batch's trials alive while its jobs
run (heartbeat), and turn a job's return into the trial's state. Used by the sweeper plugin
(``hydra_plugins/lit_optuna_sweeper``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from lit_tricks.sweeps.trials import FAIL_REASON, record_heartbeat

__all__ = ["Heartbeat", "ask_trial", "fail_trial", "job_outcome", "read_job_record", "root_error"]

log = logging.getLogger(__name__)


def root_error(err: BaseException) -> str:
    """``Type: message`` of the innermost cause, first line; a rejected config (``problems``) names them all."""
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    problems = getattr(err, "problems", None)
    if isinstance(problems, list) and problems:
        return f"{type(err).__name__}: " + "; ".join(str(p) for p in problems)
    return f"{type(err).__name__}: {err}".splitlines()[0]


class Heartbeat:
    """A thread that marks the batch's running trials alive every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_ids: Sequence[int], interval: float | None) -> None:
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                record_heartbeat(self.storage, trial_id)
            except Exception as err:  # a finished trial, or the database briefly away: try again next beat
                log.debug("heartbeat of trial id %d: %s", trial_id, err)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, name="lit_optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for an Optuna distribution (an enqueued trial returns its fixed value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)  # type: ignore[arg-type]
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)  # type: ignore[attr-defined]


def fail_trial(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Tell ``trial`` FAIL with ``reason`` (a trial that is not counted: a rerun replaces it)."""
    trial.set_user_attr(FAIL_REASON, reason)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def ask_trial(study: optuna.Study, space: Mapping[str, BaseDistribution]) -> optuna.Trial:
    """Ask a trial (an enqueued one first) and sample ``space`` into it.

    A trial that cannot be sampled is told FAIL before the error propagates, never left RUNNING without a
    heartbeat (every later resume of the study would wait for it).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
        try:
            for name, dist in space.items():
                _suggest(trial, name, dist)
        except BaseException as err:
            fail_trial(study, trial, f"not launched: {root_error(err)}")
            raise
    return trial


def read_job_record(job_dir: Path) -> dict[str, Any]:
    """The job's ``metrics.json`` as a dict ({} when missing or unreadable)."""
    try:
        data = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_outcome(ret: Any, record: Mapping[str, Any]) -> tuple[str, float | None, str | None]:
    """(trial state name, objective, reason) of a Hydra ``JobReturn`` and the job's record.

    A raised ``optuna.TrialPruned`` or a ``pruned`` record: PRUNED; another exception or a non-finite objective:
    FAIL with the record's error line (which lists a rejected config's problems), else the root error.
    """
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.FAILED:
        err = ret._return_value
        if type(err).__name__ == "TrialPruned":
            return "PRUNED", None, str(record.get("error") or err)
        return "FAIL", None, record.get("error") or (root_error(err) if isinstance(err, BaseException) else str(err))
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        value = math.nan
    if record.get("status") == "pruned":
        return "PRUNED", None, record.get("error")
    if not math.isfinite(value) or record.get("status") == "failed":
        return "FAIL", None, record.get("error") or f"objective is {ret.return_value!r}"
    return "COMPLETE", value, None
