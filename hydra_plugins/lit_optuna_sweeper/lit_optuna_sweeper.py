"""``hydra/sweeper=lit_optuna``: an Optuna study driven by ask-and-tell through whatever Hydra launcher is configured.

Each batch asks up to ``n_jobs`` trials, launches them as Hydra jobs (job directory ``<sweep dir>/<trial number>``),
and tells each trial its job's outcome: the returned objective (COMPLETE), a raised ``optuna.TrialPruned`` (PRUNED),
or a failure (FAIL, with the root error as ``fail_reason``). The study lives in a storage (default: SQLite next to the
task's sweeps), so a rerun of the same command resumes it and several workers can share it; they stop together once
``n_trials`` trials have finished (see :func:`lit_tricks.sweeps.study.is_counted`). Optuna is imported only when a
sweep starts: Hydra imports this module in every app to discover plugins.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["LitOptunaSweeper"]

log = logging.getLogger(__name__)


def _root_error(err: BaseException) -> str:
    """``Type: message`` of the innermost cause, first line only."""
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return f"{type(err).__name__}: {err}".splitlines()[0]


class _Heartbeat:
    """A thread that marks the batch's running trials alive every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_ids: Sequence[int], interval: float | None) -> None:
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        from lit_tricks.sweeps.study import record_heartbeat

        for trial_id in self.trial_ids:
            try:
                record_heartbeat(self.storage, trial_id)
            except Exception as err:  # a finished trial, or the database briefly away: try again next beat
                log.debug("heartbeat of trial id %d: %s", trial_id, err)

    def __enter__(self) -> _Heartbeat:
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


class LitOptunaSweeper(Sweeper):
    """Optuna sweeper; the fields are documented in ``conf/hydra/sweeper/lit_optuna.yaml`` and docs/sweeps.md."""

    def __init__(self, direction: str = "minimize", n_trials: int | None = 20, n_jobs: int = 1,
                 sampler: str = "tpe", sampler_kwargs: Any = None, seed: int | None = None,
                 pruner: str | None = None, pruner_kwargs: Any = None, storage: str | None = None,
                 study_name: str = "study", heartbeat_interval: int | None = 60, grace_period: int | None = 180,
                 poll_interval: float = 5.0, params: Any = None, trial: int | None = None) -> None:
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = int(n_jobs)
        self.sampler = sampler
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.seed = seed
        self.pruner = pruner
        self.pruner_kwargs = dict(pruner_kwargs or {})
        self.storage = storage
        self.study_name = str(study_name)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.poll_interval = float(poll_interval)
        self.params = {str(k): v for k, v in (params or {}).items()}
        if self.n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_jobs must be >= 1, got {n_jobs!r}")
        if n_trials is not None and int(n_trials) < 1:
            raise ValueError(f"hydra.sweeper.n_trials must be >= 1 or null (grid: the grid's size), got {n_trials!r}")
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------------ the study
    def _direction(self) -> str:
        from lit_tricks.sweeps.study import direction_from_mode

        direction = direction_from_mode(self.direction)
        mode = OmegaConf.select(self.config, "monitor_mode", default=None) if self.config is not None else None
        if mode in ("min", "max") and direction != direction_from_mode(mode):
            raise ValueError(f"hydra.sweeper.direction={self.direction} contradicts monitor_mode={mode}: leave "
                             "direction at its default (${monitor_mode}) or change monitor_mode")
        return direction

    def _open(self, sweep_dir: Path, space: dict[str, Any]) -> tuple[Any, str]:
        import optuna

        from lit_tricks.sweeps.study import build_pruner, build_sampler, open_storage, resolve_storage_url

        url = resolve_storage_url(self.storage, sweep_dir)
        storage = open_storage(url, self.heartbeat_interval, self.grace_period)
        direction = self._direction()
        study = optuna.create_study(
            storage=storage, study_name=self.study_name, direction=direction,  # type: ignore[arg-type]
            load_if_exists=True,
            sampler=build_sampler(self.sampler, self.seed, space, self.sampler_kwargs),
            pruner=build_pruner(self.pruner, self.pruner_kwargs))
        if study.direction.name.lower() != direction:
            raise ValueError(f"study {self.study_name!r} in {url} was created to {study.direction.name.lower()}; "
                             f"this sweep would {direction}: pick another study_name")
        return study, url

    def _write_study_file(self, sweep_dir: Path, url: str, direction: str) -> None:
        from lit_tricks.fault.atomic import atomic_write_bytes
        from lit_tricks.sweeps.study import STUDY_FILE

        info = {"storage": url, "study_name": self.study_name, "direction": direction}
        atomic_write_bytes(json.dumps(info, indent=2).encode(), sweep_dir / STUDY_FILE)

    # ----------------------------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> Any:
        from lit_tricks.sweeps import study as S

        assert self.config is not None, "setup() first"
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = S.parse_search_space(self.params, arguments)
        n_trials = self.n_trials
        if n_trials is None:
            if str(self.sampler).lower() != "grid":
                raise ValueError("hydra.sweeper.n_trials=null is only for sampler=grid (the grid's size)")
            n_trials = math.prod(len(v) for v in S.grid_search_space(space).values())
        n_trials = int(n_trials)
        study, url = self._open(sweep_dir, space)
        self._write_study_file(sweep_dir, url, study.direction.name.lower())
        log.info("lit_optuna: study %r (%s), %s, %d trials, sampler %s, pruner %s", self.study_name, url,
                 study.direction.name.lower(), n_trials, self.sampler, self.pruner or "none")
        while True:
            S.fail_stale_trials(study, self.grace_period if self.heartbeat_interval else None)
            trials = study.get_trials(deepcopy=False)
            done = sum(S.is_counted(t) for t in trials)
            active = sum(S.is_active(t) for t in trials)
            if done >= n_trials:
                log.info("lit_optuna: study %r has %d finished trials (n_trials=%d): done", self.study_name, done,
                         n_trials)
                break
            room = n_trials - done - active
            if room <= 0:
                if not self.heartbeat_interval:
                    log.warning("lit_optuna: %d trials of other workers still run; without a heartbeat this worker "
                                "cannot tell a dead one from a slow one, so it stops here", active)
                    break
                time.sleep(self.poll_interval)  # another worker's trials run; if one dies, its heartbeat stops
                continue
            batch = self._ask(study, space, min(self.n_jobs, room), n_trials, sweep_dir)
            if batch:
                self._run_batch(study, batch, fixed, sweep_dir)
        self._write_results(study, sweep_dir)
        return None

    def _ask(self, study: Any, space: dict[str, Any], count: int, n_trials: int, sweep_dir: Path) -> list[Any]:
        from lit_tricks.sweeps import study as S

        batch: list[Any] = []
        for _ in range(count):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask(space)
            if not S.claim_trial(study, trial.number, n_trials):  # another worker asked at the same moment
                trial.set_user_attr(S.FAIL_REASON, f"surplus: n_trials={n_trials} already running or finished")
                study.tell(trial, state=optuna_state("FAIL"), skip_if_finished=True)
                break
            trial.set_user_attr(S.JOB_DIR, str((sweep_dir / str(trial.number)).absolute()))
            batch.append(trial)
        return batch

    def _run_batch(self, study: Any, batch: list[Any], fixed: list[str], sweep_dir: Path) -> None:
        from lit_tricks.sweeps import study as S

        overrides = []
        for trial in batch:
            params = [f"{k}={S.override_value(v)}" for k, v in trial.params.items()]
            overrides.append(tuple([*fixed, *params, f"hydra.sweep.subdir={trial.number}",
                                    f"hydra.sweeper.trial={trial.number}"]))
        log.info("lit_optuna: launching trials %s", ", ".join(str(t.number) for t in batch))
        told: set[int] = set()
        try:
            with _Heartbeat(study._storage, [t._trial_id for t in batch], self.heartbeat_interval):
                assert self.launcher is not None, "setup() first"
                returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            for trial, ret in zip(batch, returns):
                self._tell(study, trial, ret, sweep_dir / str(trial.number))
                told.add(trial.number)
        except BaseException as err:  # interrupted: fail what did not finish; not counted, so a rerun replaces it
            for trial in batch:
                if trial.number not in told:
                    try:
                        trial.set_user_attr(S.FAIL_REASON, f"interrupted: {_root_error(err)}")
                        study.tell(trial, state=optuna_state("FAIL"), skip_if_finished=True)
                    except Exception:  # the storage itself is gone
                        pass
            raise

    def _tell(self, study: Any, trial: Any, ret: Any, job_dir: Path) -> None:
        from hydra.core.utils import JobStatus

        from lit_tricks.sweeps import study as S

        state, value, reason = "COMPLETE", None, None
        if ret.status == JobStatus.FAILED:
            err = ret._return_value
            if type(err).__name__ == "TrialPruned":
                state, reason = "PRUNED", str(err)
            else:
                state, reason = "FAIL", _root_error(err) if isinstance(err, BaseException) else str(err)
        else:
            record = _read_record(job_dir)
            try:
                value = float(ret.return_value)
            except (TypeError, ValueError):
                value = math.nan
            if record.get("status") == "pruned":
                state, value, reason = "PRUNED", None, record.get("error")
            elif not math.isfinite(value):
                state, value = "FAIL", None
                reason = record.get("error") or f"objective is {ret.return_value!r}"
        status = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}[state]
        try:
            trial.set_user_attr(S.JOB_STATUS, status)
            if reason:
                trial.set_user_attr(S.FAIL_REASON, str(reason))
            study.tell(trial, value, state=optuna_state(state))
        except Exception as err:  # failed meanwhile as stale by another worker (a very long pause): keep going
            log.warning("lit_optuna: trial %d finished (%s) but could not be told: %s", trial.number, status, err)
            return
        if state == "FAIL":
            log.warning("lit_optuna: trial %d failed: %s", trial.number, reason)
        elif state == "PRUNED":
            log.info("lit_optuna: trial %d pruned", trial.number)

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        from lit_tricks.fault.atomic import atomic_write_bytes

        try:
            best = study.best_trial
        except ValueError:  # no complete trial
            log.warning("lit_optuna: study %r has no complete trial", self.study_name)
            return
        results = {"name": "lit_optuna", "study_name": self.study_name, "best_trial": best.number,
                   "best_params": dict(best.params), "best_value": best.value}
        atomic_write_bytes(OmegaConf.to_yaml(OmegaConf.create(results)).encode(),
                           sweep_dir / "optimization_results.yaml")
        log.info("lit_optuna: best trial %d: %s=%.6g %s", best.number, "objective", best.value, dict(best.params))


def optuna_state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _read_record(job_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
