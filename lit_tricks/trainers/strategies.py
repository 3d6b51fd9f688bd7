"""Hydra-safe DDP/FSDP/FSDP2 strategies built from YAML-friendly values, and linear LR scaling with the global batch.

Lightning's script launcher starts ranks > 0 by re-running ``sys.argv``; the strategies here start each child rank
from the Hydra job's composed config instead (see :mod:`lit_tricks.trainers.hydra_job`).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import subprocess
from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from lit_tricks.compat import (
    SubprocessScriptLauncher,
    basic_subprocess_cmd,
    set_num_threads_if_needed,
    set_strategy_launcher,
)
from lit_tricks.fault.sharded_checkpoint import ShardedSaves
from lit_tricks.functional.lr_scale import scale_lr_
from lit_tricks.trainers.hydra_job import _JOB, _destroy_process_group, _hydra_child_base, child_rank_command

__all__ = [
    "HydraSafeDDPStrategy", "HydraSafeFSDPStrategy", "HydraSafeModelParallelStrategy", "ddp_strategy", "fsdp_strategy",
    "model_parallel_strategy", "scale_learning_rates",
]

log = logging.getLogger(__name__)


class _HydraSafeLauncher(SubprocessScriptLauncher):
    """Lightning's script launcher, but child ranks run the job's composed config and no watchdog kills the sweep.

    Lightning's child-process observer SIGKILLs the *main* process when a child fails, which would end a whole
    sweep; here a failed child makes rank 0 fail at its next collective (within the process-group timeout) and
    job_guard reaps the children.
    """

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        set_num_threads_if_needed(self.num_processes)
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
                command, cwd = list(basic_subprocess_cmd()), None
            else:
                config_dir, run_dir, job_name, chdir, cwd, job_num = base
                command = child_rank_command(local_rank, config_dir, run_dir, job_name, chdir, job_num)
            proc = subprocess.Popen(command, env=env_copy, cwd=cwd)
            self.procs.append(proc)
            _JOB.children.append(proc)


#: Linear scaling rule (Goyal et al. 2017): :func:`lit_tricks.functional.lr_scale.scale_lr_` under its older name.
scale_learning_rates = scale_lr_


@functools.cache
def _destroy_process_group_at_exit() -> None:
    """Destroy the process group at interpreter exit, whatever its backend (once per process).

    Registered for a group the strategy created (as Lightning does), not for one that existed before the Trainer.
    Lightning registers this for NCCL only; a gloo group left to interpreter finalization can abort the process
    ("terminate called without an active exception", SIGABRT: pytorch/pytorch#190489), which failed a spawned rank
    after its fit had finished. The CLI's job_guard destroys it already; this covers spawned ranks and plain scripts.
    """
    atexit.register(_destroy_process_group)


class _HydraSafeMixin:
    """Hydra-safe child launch, the process group destroyed at exit, optional linear LR scaling with the global
    batch."""

    scale_lr: bool = False

    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        launcher = self.launcher  # type: ignore[attr-defined]
        if type(launcher) is SubprocessScriptLauncher:
            safe = _HydraSafeLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
            set_strategy_launcher(self, safe)  # type: ignore[arg-type]

    def setup_environment(self) -> None:
        existed = dist.is_available() and dist.is_initialized()  # a group made before the Trainer is its owner's
        super().setup_environment()  # type: ignore[misc]
        if not existed:
            _destroy_process_group_at_exit()

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)  # type: ignore[misc]
        if self.scale_lr:
            factor = int(trainer.world_size) * int(trainer.accumulate_grad_batches)
            schedulers = [c.scheduler for c in self.lr_scheduler_configs]  # type: ignore[attr-defined]
            scale_lr_(self.optimizers, schedulers, factor)  # type: ignore[attr-defined]
            log.info("scale_lr: learning rates x%d (world size x gradient accumulation)", factor)


class HydraSafeDDPStrategy(_HydraSafeMixin, DDPStrategy):
    """DDPStrategy whose child ranks run the Hydra job's composed config in rank 0's run dir (see module doc)."""


class HydraSafeFSDPStrategy(_HydraSafeMixin, FSDPStrategy):
    """FSDPStrategy whose child ranks run the Hydra job's composed config in rank 0's run dir (see module doc)."""


class HydraSafeModelParallelStrategy(_HydraSafeMixin, ModelParallelStrategy):
    """ModelParallelStrategy (FSDP2) whose child ranks run the Hydra job's composed config (see module doc), whose
    distributed checkpoints are written atomically (:class:`~lit_tricks.fault.sharded_checkpoint.ShardedSaves`), and
    whose ``data_parallel_size=None`` means every process (``world size / tensor_parallel_size``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ShardedSaves.of(self).keep = True

    def setup_environment(self) -> None:
        if self._data_parallel_size is None:  # known now: the launcher has set the processes and nodes
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()


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


def model_parallel_strategy(*, timeout_s: float = 1800.0, process_group_backend: str | None = None,
                            data_parallel_size: int | None = None, tensor_parallel_size: int = 1,
                            save_distributed_checkpoint: bool = True,
                            scale_lr: bool = False) -> HydraSafeModelParallelStrategy:
    """A Hydra-safe ``ModelParallelStrategy`` (FSDP2 through the module's ``configure_model``; TrickModule shards per
    ``module.shard``) from YAML-friendly values; on CPU (gloo) as on GPUs (NCCL).

    data_parallel_size: ranks that shard the parameters; None = all (``world size / tensor_parallel_size``).
    save_distributed_checkpoint: True = each checkpoint is a directory of per-rank shards (written atomically;
    ``resume=auto`` finds it); False = rank 0 writes one full file (loadable without sharding).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    for name, size in (("data_parallel_size", data_parallel_size), ("tensor_parallel_size", tensor_parallel_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {size!r}")
    strategy = HydraSafeModelParallelStrategy(
        data_parallel_size=data_parallel_size,  # type: ignore[arg-type]  # None: resolved in setup_environment
        tensor_parallel_size=tensor_parallel_size, save_distributed_checkpoint=save_distributed_checkpoint,
        process_group_backend=process_group_backend, timeout=timedelta(seconds=timeout_s),
    )
    strategy.scale_lr = bool(scale_lr)
    return strategy
