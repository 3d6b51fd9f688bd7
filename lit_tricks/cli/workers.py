"""Sweep workers that outlive the shell: one SLURM array job of N tasks, each an independent ``lit_optuna`` worker
of the same study.

lit-tricks-workers --workers 8 hparams_search=tpe hydra.sweeper.n_trials=64
lit-tricks-workers --workers 8 --gpus 1 --partition gpu hparams_search=asha \\
    "hydra.sweeper.storage='postgresql+psycopg://me:secret@dbhost:5432/optuna'"

Everything after the options is a Hydra override of ``lit-tricks-train -m``. The command checks the composed config
(one line per problem, nothing submitted), submits with ``sbatch`` and returns at once. Each task runs
``lit-tricks-train -m <overrides> hydra/launcher=basic hydra.sweeper.n_jobs=1`` in the submitting directory: it asks
one trial at a time and runs it in its own allocation until the study has ``n_trials`` finished trials. The study
lives in a journal file on the shared file system (default ``<task log dir>/optuna.journal``) or in PostgreSQL;
SQLite is refused (its locks are unsafe on network file systems). Tasks are ``--requeue``-able and get SIGUSR1
``--signal-delay`` seconds before their time limit (the Preemption callback checkpoints and requeues); a worker that
dies stops its heartbeat, and another worker fails its trial after ``grace_period`` s and runs a new one. Watch it
with ``squeue -j <id>`` and ``lit-tricks-report <sweep dir>`` (reads the study while it runs).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lit_tricks.cli.args import Parser
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.validation import ArgumentError, check_number

__all__ = ["main", "sbatch_script", "worker_plan"]

PROG = "lit-tricks-workers"
#: Overrides every worker sets itself: it runs its trials one at a time in its own allocation.
WORKER_OVERRIDES = ("hydra/launcher=basic", "hydra.sweeper.n_jobs=1")
JOURNAL_FILE = "optuna.journal"
#: First argument of the command an array task runs (``python -m lit_tricks.cli.workers --worker <overrides>``).
WORKER_FLAG = "--worker"


class WorkerError(ValueError):
    """A problem found before anything is submitted (one line)."""


def _argument_error(err: BaseException) -> ArgumentError | None:
    """The ``ArgumentError`` behind ``err`` (a constructor's refusal inside Hydra's InstantiationException), or None."""
    while err is not None and not isinstance(err, ArgumentError):
        err = err.__cause__  # type: ignore[assignment]
    return err


def worker_plan(overrides: list[str]) -> dict[str, Any]:
    """Check the sweep the workers would run, before anything is written or submitted.

    Composes ``train.yaml`` with ``overrides`` (sweep overrides such as ``a=1,2`` or ``interval(...)`` go to the
    sweeper, as under ``-m``), checks the training config, the sweeper's arguments and the search space, and returns
    ``sweep_dir``, ``study_name``, ``n_trials``, ``storage`` (the URL every worker uses) and ``overrides`` (for the
    workers' command line). Raises :class:`WorkerError` (one line) on a problem.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import instantiate

    from lit_tricks.cli.hydra_errors import condense_hydra_error
    from lit_tricks.config_checks import ConfigError, check_config
    from lit_tricks.records import root_error
    from lit_tricks.sweeps.study import override_value, parse_search_space

    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in ("hydra/launcher", "hydra.sweeper.n_jobs") or key.startswith("hydra.launcher."):
            raise WorkerError(f"{override}: each worker runs its own trials one at a time ({' '.join(WORKER_OVERRIDES)}"
                              "); leave it out")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweeps = [text for text, o in zip(overrides, parsed) if o.is_sweep_override()]
        fixed = [text for text, o in zip(overrides, parsed) if not o.is_sweep_override()]
        GlobalHydra.instance().clear()
        with initialize_config_module("lit_tricks.conf", version_base="1.3"):
            cfg = compose("train", overrides=fixed, return_hydra_config=True)
    except Exception as err:
        raise WorkerError(condense_hydra_error(err) or str(err).strip().splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    if "LitOptunaSweeper" not in str(sweeper.get("_target_", "")):
        raise WorkerError(f"hydra.sweeper is {sweeper.get('_target_')!r}: workers share an Optuna study; pick an "
                          "hparams_search preset (e.g. hparams_search=tpe)")
    if sweeper.get("heartbeat_interval") in (None, 0):
        raise WorkerError(f"hydra.sweeper.heartbeat_interval={sweeper.get('heartbeat_interval')}: workers need the "
                          "heartbeat (a dead worker's trial is failed by it and replaced)")
    HydraConfig.instance().set_config(cfg)
    try:
        params = instantiate(sweeper).params  # the sweeper checks its own arguments
        parse_search_space(params)
        for override in sweeps:
            try:
                parse_search_space({}, [override])
            except ArgumentError as err:  # names the key and the value itself
                raise WorkerError(str(err)) from None
            except Exception as err:
                raise WorkerError(f"{override}: {str(err).strip().splitlines()[0]}") from None
        check_config(cfg)
    except ConfigError as err:
        raise WorkerError("; ".join(err.problems)) from None
    except WorkerError:
        raise
    except Exception as err:
        refusal = _argument_error(err)
        raise WorkerError(str(refusal) if refusal is not None else root_error(err)) from None
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    sweep_dir = Path(str(cfg.hydra.sweep.dir)).absolute()
    storage = _storage_url(sweeper.get("storage"), sweep_dir)
    return {"sweep_dir": sweep_dir, "study_name": str(sweeper.study_name), "n_trials": sweeper.get("n_trials"),
            "storage": storage,
            "overrides": [*overrides, *WORKER_OVERRIDES, f"hydra.sweeper.storage={override_value(storage)}"]}


def _storage_url(storage: Any, sweep_dir: Path) -> str:
    """The workers' storage: a journal file beside the task's sweeps when unset; SQLite refused; paths absolute."""
    if storage in (None, "", "null", "None"):
        task_dir = sweep_dir.parent.parent if sweep_dir.parent.name == "multiruns" else sweep_dir.parent
        return f"journal:///{(task_dir / JOURNAL_FILE).as_posix().lstrip('/')}"
    url = str(storage)
    if url.startswith("sqlite:"):
        raise WorkerError(f"hydra.sweeper.storage={url}: SQLite locks are unsafe for workers on several machines; "
                          f"use journal:///<shared path>/{JOURNAL_FILE} or postgresql+psycopg://...")
    if url.startswith("journal://") and not url.startswith("journal:///"):  # relative: from the submit directory
        return f"journal:///{Path(url[len('journal://'):]).absolute().as_posix().lstrip('/')}"
    return url


def sbatch_script(python: str, overrides: list[str], *, workers: int, log_dir: Path, workdir: Path,
                  job_name: str, max_running: int | None = None, partition: str | None = None, time_min: int = 240,
                  cpus_per_task: int = 4, mem: str = "16G", gpus: int = 0, signal_delay_s: int = 120,
                  sbatch_args: tuple[str, ...] = (), setup: tuple[str, ...] = ()) -> str:
    """The batch script of the workers' array job: one task per worker, requeued on preemption, SIGUSR1 before the
    time limit to the worker itself (``B:``; the script ``exec``s Python, so the worker is the batch shell)."""
    array = f"0-{workers - 1}" + (f"%{max_running}" if max_running else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --array={array}", "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={cpus_per_task}", f"#SBATCH --mem={mem}",
             f"#SBATCH --time={time_min}", "#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{signal_delay_s}",
             "#SBATCH --open-mode=append", f"#SBATCH --output={log_dir}/%A_%a.out", f"#SBATCH --chdir={workdir}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines += [f"#SBATCH {arg}" for arg in sbatch_args]
    lines += ["export PYTHONUNBUFFERED=1", *setup]
    command = " ".join(shlex.quote(a) for a in [python, "-m", "lit_tricks.cli.workers", WORKER_FLAG, *overrides])
    lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"


class WorkerTerminated(SystemExit):
    """SIGTERM reached a worker outside training (where the Preemption callback owns it): SLURM cancels, requeues or
    preempts the task. Raised instead of dying at once, so a write to the study in progress releases its journal
    lock (a dead holder's lock stalls every other worker for 30 s) and the sweeper records the trial interrupted."""

    def __str__(self) -> str:
        return "SIGTERM: the worker was cancelled, requeued or preempted"


def _terminate_once(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM (requeue after a checkpoint) must not cut the cleanup
    raise WorkerTerminated(128 + signum)


def run_worker(overrides: list[str]) -> None:
    """One worker (an array task): ``lit-tricks-train -m <overrides>`` with SIGTERM raised as
    :class:`WorkerTerminated` between trials."""
    from lit_tricks.cli.train import main as train_main

    signal.signal(signal.SIGTERM, _terminate_once)
    sys.argv = [PROG, "-m", *overrides]
    train_main()


def _parser() -> argparse.ArgumentParser:
    parser = Parser(PROG, __doc__)
    parser.add_argument("--workers", "-n", type=int, required=True, help="array tasks (independent workers)")
    parser.add_argument("--max-running", type=int, default=None, help="at most this many at once (--array=...%%K)")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    parser.add_argument("--time", type=int, default=240, help="time limit per worker in minutes (requeued after)")
    parser.add_argument("--cpus-per-task", type=int, default=4)
    parser.add_argument("--mem", default="16G", help="memory per worker (sbatch --mem)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per worker (--gres=gpu:N)")
    parser.add_argument("--signal-delay", type=int, default=120, help="SIGUSR1 this many s before the time limit")
    parser.add_argument("--sbatch", action="append", default=[], metavar="ARG",
                        help="another sbatch option, e.g. --sbatch=--account=me (repeatable)")
    parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="a shell line run before the worker, e.g. 'source .venv/bin/activate' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script; submit nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. hparams_search=tpe")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:  # inside an array task (the batch script's command)
        run_worker(argv[1:])
        return 0
    args = _parser().parse_args(argv)
    try:
        for flag, low in (("workers", 1), ("max_running", 1), ("time", 1), ("cpus_per_task", 1), ("gpus", 0),
                          ("signal_delay", 0)):
            value = getattr(args, flag)
            if value is not None:
                check_number(f"--{flag.replace('_', '-')}", value, low, integer=True)
        if not args.dry_run and shutil.which("sbatch") is None:
            raise WorkerError("sbatch not found: workers are SLURM jobs (no SLURM here; see docs/cluster.md)")
        plan = worker_plan(args.overrides)
    except (WorkerError, ArgumentError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    sweep_dir = plan["sweep_dir"]
    log_dir = sweep_dir / "workers"
    script = sbatch_script(sys.executable, plan["overrides"], workers=args.workers, log_dir=log_dir,
                           workdir=Path.cwd(), job_name=f"lt-workers-{plan['study_name']}",
                           max_running=args.max_running, partition=args.partition, time_min=args.time,
                           cpus_per_task=args.cpus_per_task, mem=args.mem, gpus=args.gpus,
                           signal_delay_s=args.signal_delay, sbatch_args=tuple(args.sbatch), setup=tuple(args.setup))
    if args.dry_run:
        print(script, end="")
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the output file's directory
    proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        print(f"{PROG}: sbatch failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    job = proc.stdout.strip().split(";")[0]
    atomic_write_bytes(script.encode(), log_dir / f"{job}.sbatch")
    print(f"{PROG}: submitted {args.workers} workers as SLURM array job {job}")
    print(f"  study:  {plan['study_name']} in {plan['storage']} (n_trials={plan['n_trials']})")
    print(f"  trials: {sweep_dir}/<trial number>/   worker logs: {log_dir}/{job}_<task>.out")
    print(f"  watch:  squeue -j {job}; lit-tricks-report {sweep_dir}")
    print(f"  stop:   scancel {job}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
