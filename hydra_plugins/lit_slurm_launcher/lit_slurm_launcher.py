"""``hydra/launcher=slurm`` (and ``slurm_local``): hydra-submitit-launcher's ``SlurmLauncher`` with a check at
``setup``: without ``srun`` and ``sbatch`` on PATH (not a SLURM machine) the sweep is refused in one line naming
the launcher, instead of submitit's traceback at the first launch after the sweep directory was made.

Needs the ``cluster`` extra; without it this module defines nothing (Hydra scans it in every app).
"""

from __future__ import annotations

import shutil
from typing import Any

__all__: list[str] = []

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the cluster extra is not installed
    SlurmLauncher = None

if SlurmLauncher is not None:
    __all__ = ["LitSlurmLauncher"]

    class LitSlurmLauncher(SlurmLauncher):  # type: ignore[misc,valid-type]
        """submitit's SLURM launcher; ``setup`` refuses a machine without SLURM's commands."""

        def setup(self, **kwargs: Any) -> None:
            missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
            if missing:
                from lit_tricks.validation import ArgumentError

                raise ArgumentError("hydra/launcher", "slurm", f"needs SLURM, but {' and '.join(missing)} "
                                    "is not on PATH (not a SLURM machine): run it on the cluster's login node, "
                                    "start a local cluster (make cluster-up), or use hydra/launcher=basic")
            super().setup(**kwargs)
