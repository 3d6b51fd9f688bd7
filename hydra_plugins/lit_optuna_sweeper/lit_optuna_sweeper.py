"""``hydra/sweeper=lit_optuna``: an Optuna study driven by ask-and-tell through whatever Hydra launcher is configured.

Each batch asks up to ``n_jobs`` trials, launches them as Hydra jobs (job directory ``<sweep dir>/<trial number>``),
and tells each trial its job's outcome: the returned objective (COMPLETE), a raised ``optuna.TrialPruned`` (PRUNED),
or a failure (FAIL, with the root error as ``fail_reason``). The study lives in a storage (default: SQLite next to the
task's sweeps), so a rerun of the same command resumes it and several workers can share it; they stop together once
``n_trials`` trials have finished (see :func:`lit_tricks.sweeps.trials.is_counted`). Optuna is imported only when a
sweep starts: Hydra imports this module in every app to discover plugins.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["LitOptunaSweeper"]

log = logging.getLogger(__name__)


class LitOptunaSweeper(Sweeper):
    """Optuna sweeper; the fields are documented in ``conf/hydra/sweeper/lit_optuna.yaml`` and docs/sweeps.md.

    Every field is checked here and the whole sweep (search space, grid, a job's composed config, the storage and
    an existing study) before anything is written: a refused sweep prints one line and leaves nothing behind.
    """

    def __init__(self, direction: str = "minimize", n_trials: int | None = 20, n_jobs: int = 1,
                 sampler: str = "tpe", sampler_kwargs: Any = None, seed: int | None = None,
                 pruner: str | None = None, pruner_kwargs: Any = None, storage: str | None = None,
                 study_name: str = "study", heartbeat_interval: float | None = 60, grace_period: float | None = 180,
                 poll_interval: float = 5.0, params: Any = None, trial: int | None = None,
                 resume_key: str | None = "resume") -> None:
        from lit_tricks.sweeps.checks import check_sweeper_args

        check_sweeper_args(direction=direction, n_trials=n_trials, n_jobs=n_jobs, sampler=sampler,
                           sampler_kwargs=sampler_kwargs, seed=seed, pruner=pruner, pruner_kwargs=pruner_kwargs,
                           storage=storage, study_name=study_name, heartbeat_interval=heartbeat_interval,
                           grace_period=grace_period, poll_interval=poll_interval, params=params, trial=trial,
                           resume_key=resume_key)
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, int(n_jobs)
        self.sampler, self.sampler_kwargs, self.seed = str(sampler).lower(), dict(sampler_kwargs or {}), seed
        self.pruner, self.pruner_kwargs, self.storage = pruner, dict(pruner_kwargs or {}), storage
        self.study_name, self.heartbeat_interval, self.grace_period = study_name, heartbeat_interval, grace_period
        self.poll_interval, self.resume_key = float(poll_interval), resume_key
        self.params = {str(k): v for k, v in (params or {}).items()}
        self.config: DictConfig | None = None
        self._files_written = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------------ the checks
    def _direction(self) -> str:
        from lit_tricks.sweeps.study import direction_from_mode
        from lit_tricks.validation import ArgumentError

        direction = direction_from_mode(self.direction)
        mode = OmegaConf.select(self.config, "monitor_mode", default=None) if self.config is not None else None
        if mode is not None and mode not in ("min", "max"):
            raise ArgumentError("monitor_mode", mode, "must be one of ['min', 'max']")
        if mode in ("min", "max") and direction != direction_from_mode(mode):
            raise ArgumentError("hydra.sweeper.direction", self.direction, f"contradicts monitor_mode={mode}: leave "
                                "direction at its default (${monitor_mode}) or change monitor_mode")
        return direction

    def _open(self, sweep_dir: Path, space: dict[str, Any], texts: dict[str, str], direction: str,
              sampler: Any) -> tuple[Any, str]:
        import optuna

        from lit_tricks.sweeps.checks import check_storage_url, check_study_compatible, probe_storage
        from lit_tricks.sweeps.study import build_pruner, open_storage, resolve_storage_url

        url = resolve_storage_url(self.storage, sweep_dir)
        check_storage_url(url)
        probe_storage(url)
        with warnings.catch_warnings():  # "heartbeat_interval is experimental": not the user's to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = open_storage(url, self.heartbeat_interval, self.grace_period)  # type: ignore[arg-type]
        check_study_compatible(storage, self.study_name, direction, space, texts)
        study = optuna.create_study(storage=storage, study_name=self.study_name, direction=direction,  # type: ignore[arg-type]
                                    load_if_exists=True, sampler=sampler,
                                    pruner=build_pruner(self.pruner, self.pruner_kwargs))
        return study, url

    def _write_sweep_files(self, sweep_dir: Path, url: str, direction: str) -> None:
        """``multirun.yaml`` and ``optuna_study.json`` (the storage URL as given: the report opens it): written once
        this worker launches its first job."""
        from lit_tricks.fault.atomic import atomic_write_bytes
        from lit_tricks.sweeps.trials import STUDY_FILE

        if self._files_written:
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        info = {"storage": url, "study_name": self.study_name, "direction": direction}
        atomic_write_bytes(json.dumps(info, indent=2).encode(), sweep_dir / STUDY_FILE)
        self._files_written = True

    # ----------------------------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> Any:
        from lit_tricks.sweeps import checks as C
        from lit_tricks.sweeps import study as S
        from lit_tricks.sweeps import trials as T

        assert self.config is not None, "setup() first"
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        direction = self._direction()
        space, fixed = S.parse_search_space(self.params, arguments)
        texts = {**{k: str(v) for k, v in self.params.items()},
                 **{a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[-1] for a in arguments}}
        grid = S.grid_search_space(space) if self.sampler == "grid" else None
        n_trials = C.grid_n_trials(self.n_trials, grid)
        sampler = S.build_sampler(self.sampler, self.seed, space, self.sampler_kwargs)
        C.preflight_compose(self.hydra_context.config_loader, self.config, fixed, space)
        study, url = self._open(sweep_dir, space, texts, direction, sampler)
        log.info("lit_optuna: study %r (%s), %s, %d trials, sampler %s, pruner %s", self.study_name,
                 C.display_url(url), direction, n_trials, self.sampler, self.pruner or "none")
        while True:
            T.fail_stale_trials(study, self.grace_period if self.heartbeat_interval else None)
            trials = study.get_trials(deepcopy=False)
            done = sum(T.is_counted(t) for t in trials)
            running = sum(t.state == optuna_state("RUNNING") for t in trials)  # a WAITING one: the next ask pops it
            if done >= n_trials:
                log.info("lit_optuna: study %r has %d finished trials (n_trials=%d): done", self.study_name, done,
                         n_trials)
                break
            room = n_trials - done - running
            if room <= 0:
                if not self.heartbeat_interval:
                    log.warning("lit_optuna: %d trials of other workers still run; without a heartbeat this worker "
                                "cannot tell a dead one from a slow one, so it stops here", running)
                    break
                time.sleep(self.poll_interval)  # another worker's trials run; if one dies, its heartbeat stops
                continue
            batch = self._ask(study, space, min(self.n_jobs, room), n_trials, sweep_dir, grid)
            if batch:
                self._write_sweep_files(sweep_dir, url, direction)
                self._run_batch(study, batch, fixed, sweep_dir)
            elif grid is not None and not running and T.next_grid_point(grid, study.get_trials()) is None:
                log.warning("lit_optuna: every grid point is covered, %d of %d trials finished", done, n_trials)
                break
            else:  # another worker took the slot (or the grid's last points) at the same moment: look again
                time.sleep(self.poll_interval)
        if sweep_dir.is_dir():
            self._write_results(study, sweep_dir)
        return None

    def _ask(self, study: Any, space: dict[str, Any], count: int, n_trials: int, sweep_dir: Path,
             grid: dict[str, list[Any]] | None) -> list[Any]:
        """Up to ``count`` trials: first continuations of preempted trials, then (grid) the unvisited points."""
        from lit_tricks.fault.resume import find_resume_checkpoint
        from lit_tricks.sweeps import batch as B
        from lit_tricks.sweeps import trials as T

        def checkpoint_of(job_dir: Path) -> str | None:
            return find_resume_checkpoint(job_dir, warn=False)

        batch: list[Any] = []
        while len(batch) < count:
            trials = study.get_trials(deepcopy=False)
            pending = T.continuation(trials, checkpoint_of) if self.resume_key else None
            if pending is not None:
                study.enqueue_trial(pending[0], user_attrs=pending[1])
            elif grid is not None and not any(t.state == optuna_state("WAITING") for t in trials):
                point = T.next_grid_point(grid, trials)
                if point is None:
                    break
                study.enqueue_trial(point)
            trial = B.ask_trial(study, space)
            if not T.claim_trial(study, trial.number, n_trials):  # another worker asked at the same moment
                B.fail_trial(study, trial, f"surplus: n_trials={n_trials} already running or finished")
                break
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            duplicate = T.duplicate_of(frozen, study.get_trials(deepcopy=False), grid is not None)
            if duplicate is not None:  # another worker took the same grid point or continuation first
                B.fail_trial(study, trial, f"surplus: duplicate of trial {duplicate}")
                continue
            trial.set_user_attr(T.JOB_DIR, str((sweep_dir / str(trial.number)).absolute()))
            batch.append(trial)
        return batch

    def _run_batch(self, study: Any, batch: list[Any], fixed: list[str], sweep_dir: Path) -> None:
        from lit_tricks.sweeps import batch as B
        from lit_tricks.sweeps import study as S
        from lit_tricks.sweeps import trials as T

        overrides = []
        for trial in batch:
            params = [f"{k}={S.override_value(v)}" for k, v in trial.params.items()]
            resume = trial.user_attrs.get(T.RESUME_FROM)
            if resume and self.resume_key:
                params.append(f"++{self.resume_key}={S.override_value(str(resume))}")
                log.info("lit_optuna: trial %d continues trial %d from %s", trial.number,
                         trial.user_attrs.get(T.CONTINUES), resume)
            overrides.append(tuple([*fixed, *params, f"hydra.sweep.subdir={trial.number}",
                                    f"hydra.sweeper.trial={trial.number}"]))
        log.info("lit_optuna: launching trials %s", ", ".join(str(t.number) for t in batch))
        told: set[int] = set()
        try:
            with B.Heartbeat(study._storage, [t._trial_id for t in batch], self.heartbeat_interval):
                assert self.launcher is not None, "setup() first"
                returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            for trial, ret in zip(batch, returns):
                self._tell(study, trial, ret, sweep_dir / str(trial.number))
                told.add(trial.number)
        except BaseException as err:  # interrupted: fail what did not finish; not counted, so a rerun replaces it
            for trial in batch:
                if trial.number not in told:
                    try:
                        B.fail_trial(study, trial, f"interrupted: {B.root_error(err)}")
                    except Exception:  # the storage itself is gone
                        pass
            raise

    def _tell(self, study: Any, trial: Any, ret: Any, job_dir: Path) -> None:
        from lit_tricks.sweeps import batch as B
        from lit_tricks.sweeps import trials as T

        state, value, reason = B.job_outcome(ret, B.read_job_record(job_dir))
        status = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}[state]
        try:
            trial.set_user_attr(T.JOB_STATUS, status)
            if reason:
                trial.set_user_attr(T.FAIL_REASON, str(reason))
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
