"""Building the Trainer from config: Hydra-safe DDP/FSDP/FSDP2 strategies, Hydra-job safety for child ranks, LR scaling.

Every run builds its Trainer here (:func:`lit_tricks.trainers.build.build_trainer`), not only sweeps.
"""

from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.hydra_job import child_rank_command, config_hash, job_guard, sweep_failure_value
from lit_tricks.trainers.strategies import (
    HydraSafeDDPStrategy,
    HydraSafeFSDPStrategy,
    HydraSafeModelParallelStrategy,
    ddp_strategy,
    fsdp_strategy,
    model_parallel_strategy,
    scale_learning_rates,
)

__all__ = [
    "HydraSafeDDPStrategy",
    "HydraSafeFSDPStrategy",
    "HydraSafeModelParallelStrategy",
    "build_trainer",
    "child_rank_command",
    "config_hash",
    "ddp_strategy",
    "fsdp_strategy",
    "job_guard",
    "model_parallel_strategy",
    "scale_learning_rates",
    "sweep_failure_value",
]
