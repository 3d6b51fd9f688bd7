"""Building the Trainer from config: Hydra-safe DDP/FSDP strategies, Hydra-job safety for child ranks, LR scaling.

Every run builds its Trainer here (:func:`lit_tricks.trainers.build.build_trainer`), not only sweeps.
"""

from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.hydra_job import child_rank_command, config_hash, job_guard, sweep_failure_value
from lit_tricks.trainers.strategies import (
    HydraSafeDDPStrategy,
    HydraSafeFSDPStrategy,
    ddp_strategy,
    fsdp_strategy,
    scale_learning_rates,
)

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
    "sweep_failure_value",
]
