"""Hydra + DDP safety: one Hydra job = one clean multi-process run, and the Trainer built from ``cfg.trainer``.

Lightning's script launcher starts ranks > 0 by re-running ``sys.argv``; under ``-m`` that re-runs the whole sweep
(a second multirun directory, other hyperparameters from an Optuna sampler) and points ``hydra.run.dir`` at the
wrong place. The strategies here start each child rank from the job's *composed* config instead::

    python <script> --config-path <tmp> --config-name config hydra.run.dir=<job dir> hydra.output_subdir=null

so every rank runs exactly the job's config in rank 0's directory, and only rank 0 writes. :func:`job_guard` wraps
one job: it restores ``os.environ`` (``LOCAL_RANK``, ``MASTER_PORT``, ... must not leak into the next job), reaps the
child ranks (killing them when the job failed on rank 0, instead of leaving them in a collective until the timeout)
and destroys the process group, so the next job of a sweep starts clean.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

__all__ = [
    "HydraSafeDDPStrategy",
    "HydraSafeFSDPStrategy",
    "build_trainer",
    "child_rank_command",
    "config_hash",
    "ddp_strategy",
    "fsdp_strategy",
    "job_guard",
    "scale_learning_rates",
]

log = logging.getLogger(__name__)

#: Seconds job_guard waits for child ranks to exit after a successful job before killing them.
CHILD_EXIT_TIMEOUT_S = 120.0
#: Strategy names that build_trainer upgrades to the Hydra-safe DDP strategy (popen launcher) under Hydra.
DDP_NAMES = {"ddp": False, "ddp_find_unused_parameters_true": True, "ddp_find_unused_parameters_false": False}


@dataclass
class _JobState:
    """What the current job's launcher needs and what job_guard cleans up."""

    cfg: DictConfig | None = None
    children: list[subprocess.Popen] = field(default_factory=list)
    tmp_dirs: list[str] = field(default_factory=list)


_JOB = _JobState()


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config as sorted YAML (the ``hydra`` node excluded): equal on every rank of a job."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(container, dict):
        container.pop("hydra", None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True).encode()).hexdigest()


def _quote(value: str) -> str:
    """Quote a value for Hydra's override grammar (single quotes, escaped backslashes and quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_rank_command(local_rank: int, config_dir: str, run_dir: str, job_name: str,
                       chdir: bool = False, job_num: int | None = None) -> list[str]:
    """The command that starts child rank ``local_rank`` of the current script on a saved, composed job config.

    ``config_dir`` holds ``config.yaml`` (the job's composed config); ``run_dir`` is rank 0's output directory.
    Child ranks write nothing through Hydra: no ``.hydra/`` directory, job logging to stdout only.
    """
    from hydra.utils import to_absolute_path

    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", spec.name]
    if spec is not None and spec.name.split(".")[0] in ("loky", "joblib", "multiprocessing"):
        raise RuntimeError(
            f"lit_tricks: cannot start DDP child ranks from a {spec.name} worker (joblib launcher): run multi-process"
            " trainers with hydra/launcher=basic or slurm"
        )
    extra = [] if job_num is None else [f"hydra.job.num={int(job_num)}"]
    return command + [
        "--config-path", config_dir, "--config-name", "config",
        f"hydra.run.dir={_quote(run_dir)}",
        "hydra.output_subdir=null",
        f"hydra.job.name={job_name}_rank{local_rank}",
        f"hydra.job.chdir={str(bool(chdir)).lower()}",
        "hydra/job_logging=stdout",
        *extra,
    ]


class _HydraSafeLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, but child ranks run the job's composed config and no watchdog kills the sweep.

    Lightning's child-process observer SIGKILLs the *main* process when a child fails, which would end a whole
    sweep; here a failed child makes rank 0 fail at its next collective (within the process-group timeout) and
    job_guard reaps the children.
    """

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        base = _hydra_child_base()
        for local_rank in range(1, self.num_processes):
            env_copy = os.environ.copy()
            env_copy["LOCAL_RANK"] = f"{local_rank}"
            if os.environ.get("PL_GLOBAL_SEED") is None:
                env_copy.pop("PL_GLOBAL_SEED", None)
            if base is None:
                command, cwd = _basic_subprocess_cmd(), None
            else:
                config_dir, run_dir, job_name, chdir, cwd, job_num = base
                command = child_rank_command(local_rank, config_dir, run_dir, job_name, chdir, job_num)
            proc = subprocess.Popen(command, env=env_copy, cwd=cwd)
            self.procs.append(proc)
            _JOB.children.append(proc)


def _hydra_child_base() -> tuple[str, str, str, bool, str, int | None] | None:
    """(config dir, run dir, job name, chdir, original cwd, job num) for child ranks; None when Hydra is not in use."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    run_dir = str(hc.runtime.output_dir)
    if _JOB.cfg is not None:
        config_dir = tempfile.mkdtemp(prefix="lit_tricks_ddp_")
        _JOB.tmp_dirs.append(config_dir)
        OmegaConf.save(_JOB.cfg, os.path.join(config_dir, "config.yaml"))
    elif hc.output_subdir is not None and os.path.isfile(os.path.join(run_dir, str(hc.output_subdir), "config.yaml")):
        config_dir = os.path.join(run_dir, str(hc.output_subdir))
    else:
        raise RuntimeError(
            "lit_tricks: cannot start DDP child ranks under Hydra: wrap the job in lit_tricks.sweeps.ddp.job_guard(cfg)"
            " or keep hydra.output_subdir (the job's .hydra/config.yaml is what child ranks run)"
        )
    try:
        job_num: int | None = int(hc.job.num)
    except (MissingMandatoryValue, TypeError, ValueError):  # a single run has no job number
        job_num = None
    return config_dir, run_dir, str(hc.job.name), bool(hc.job.chdir), str(hc.runtime.cwd), job_num


def scale_learning_rates(optimizers: list[torch.optim.Optimizer], schedulers: list[Any], factor: float) -> None:
    """Multiply every param group's ``lr`` (and ``initial_lr``) and every scheduler's ``base_lrs`` by ``factor``.

    Linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): with a k times larger global batch,
    use a k times larger learning rate.
    """
    for opt in optimizers:
        for group in opt.param_groups:
            for key in ("lr", "initial_lr"):
                if key in group and isinstance(group[key], float | int):
                    group[key] = group[key] * factor
    for sched in schedulers:
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [float(lr) * factor for lr in sched._last_lr]


class _HydraSafeMixin:
    """Hydra-safe child launch, plus optional linear LR scaling with the global batch."""

    scale_lr: bool = False

    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        launcher = getattr(self, "_launcher", None)
        if type(launcher) is _SubprocessScriptLauncher:
            safe = _HydraSafeLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
            setattr(self, "_launcher", safe)  # noqa: B010 - the mixin does not redeclare Strategy._launcher

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)  # type: ignore[misc]
        if self.scale_lr:
            factor = int(trainer.world_size) * int(trainer.accumulate_grad_batches)
            schedulers = [c.scheduler for c in self.lr_scheduler_configs]  # type: ignore[attr-defined]
            scale_learning_rates(self.optimizers, schedulers, factor)  # type: ignore[attr-defined]
            log.info("scale_lr: learning rates x%d (world size x gradient accumulation)", factor)


class HydraSafeDDPStrategy(_HydraSafeMixin, DDPStrategy):
    """DDPStrategy whose child ranks run the Hydra job's composed config in rank 0's run dir (see module doc)."""


class HydraSafeFSDPStrategy(_HydraSafeMixin, FSDPStrategy):
    """FSDPStrategy whose child ranks run the Hydra job's composed config in rank 0's run dir (see module doc)."""


def ddp_strategy(*, timeout_s: float = 1800.0, process_group_backend: str | None = None,
                 start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
                 find_unused_parameters: bool = False, static_graph: bool = False,
                 gradient_as_bucket_view: bool = False, scale_lr: bool = False) -> HydraSafeDDPStrategy:
    """A Hydra-safe DDP strategy from YAML-friendly values.

    timeout_s: process-group timeout; a rank left waiting in a collective fails after this (torch's default 1800 s).
    process_group_backend: ``gloo`` (CPU), ``nccl`` (GPU) or None (Lightning picks from the accelerator).
    scale_lr: multiply learning rates by world size x gradient accumulation (linear scaling rule).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if start_method not in ("popen", "spawn", "fork", "forkserver"):
        raise ValueError(f"start_method must be one of popen, spawn, fork, forkserver; got {start_method!r}")
    strategy = HydraSafeDDPStrategy(
        process_group_backend=process_group_backend, timeout=timedelta(seconds=timeout_s), start_method=start_method,
        find_unused_parameters=find_unused_parameters, static_graph=static_graph,
        gradient_as_bucket_view=gradient_as_bucket_view,
    )
    strategy.scale_lr = bool(scale_lr)
    return strategy


SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


def fsdp_strategy(*, timeout_s: float = 1800.0, process_group_backend: str | None = None,
                  sharding_strategy: str = "FULL_SHARD", cpu_offload: bool = False,
                  auto_wrap_min_params: int | None = 1_000_000, state_dict_type: Literal["full", "sharded"] = "full",
                  scale_lr: bool = False) -> HydraSafeFSDPStrategy:
    """A Hydra-safe FSDP strategy from YAML-friendly values.

    auto_wrap_min_params: wrap every submodule with at least this many parameters in its own FSDP unit
    (torch's size_based_auto_wrap_policy); None wraps only the root.
    state_dict_type: ``full`` saves one consolidated checkpoint file (loadable without FSDP); ``sharded`` one per rank.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if sharding_strategy not in SHARDING_STRATEGIES:
        raise ValueError(f"sharding_strategy must be one of {list(SHARDING_STRATEGIES)}, got {sharding_strategy!r}")
    if state_dict_type not in ("full", "sharded"):
        raise ValueError(f"state_dict_type must be 'full' or 'sharded', got {state_dict_type!r}")
    policy = None
    if auto_wrap_min_params is not None:
        from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

        policy = functools.partial(size_based_auto_wrap_policy, min_num_params=int(auto_wrap_min_params))
    strategy = HydraSafeFSDPStrategy(
        process_group_backend=process_group_backend, timeout=timedelta(seconds=timeout_s),
        sharding_strategy=sharding_strategy,  # type: ignore[arg-type]
        cpu_offload=bool(cpu_offload), auto_wrap_policy=policy, state_dict_type=state_dict_type,
    )
    strategy.scale_lr = bool(scale_lr)
    return strategy


def _hydra_initialized() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return False
    return HydraConfig.initialized()


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger: Any) -> pl.Trainer:
    """Instantiate ``cfg.trainer`` (Trainer keyword arguments; ``strategy`` may be a ``_target_`` node).

    Under Hydra a plain ``strategy=ddp`` string becomes :class:`HydraSafeDDPStrategy` (torch's default timeout),
    so ``python scripts/train.py -m ... trainer.strategy=ddp`` is safe too.
    """
    container = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"trainer must be a mapping of Trainer keyword arguments, got {type(container).__name__}")
    container.pop("_target_", None)
    if container.get("sync_batchnorm") and container.get("accelerator") == "cpu":
        raise ValueError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm only runs on CUDA modules);"
                         " got trainer.accelerator=cpu: set trainer.sync_batchnorm=false or use trainer=ddp")
    kwargs: dict[str, Any] = instantiate(container, _convert_="all")
    strategy = kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in DDP_NAMES and _hydra_initialized():
        kwargs["strategy"] = ddp_strategy(find_unused_parameters=DDP_NAMES[strategy])
    return pl.Trainer(**kwargs, callbacks=callbacks, logger=logger)


def _reap_children(kill: bool) -> None:
    """Wait for (or, after a failure, kill) this job's child ranks so none outlives the job."""
    children, _JOB.children = _JOB.children, []
    for proc in children:
        if proc.poll() is not None:
            continue
        if not kill:
            try:
                proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
                continue
            except subprocess.TimeoutExpired:
                log.warning("child rank pid %d still running %.0f s after the job; killing it",
                            proc.pid, CHILD_EXIT_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def job_guard(cfg: DictConfig) -> Iterator[None]:
    """Wrap one Hydra job: child ranks run ``cfg``; afterwards (also on error) reap them, destroy the process group,
    restore ``os.environ`` and torch's thread count."""
    saved_env = dict(os.environ)
    threads = torch.get_num_threads()
    previous_cfg = _JOB.cfg
    _JOB.cfg = cfg
    ok = False
    try:
        yield
        ok = True
    finally:
        _reap_children(kill=not ok)
        _destroy_process_group()
        for tmp in _JOB.tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        _JOB.tmp_dirs = []
        _JOB.cfg = previous_cfg
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
