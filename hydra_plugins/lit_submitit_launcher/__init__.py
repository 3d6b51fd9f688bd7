"""Hydra launcher plugin ``hydra/launcher=slurm``: submitit's SLURM launcher that refuses a machine without SLURM in
one line and whose sweep outlives a lost job."""

from hydra_plugins.lit_submitit_launcher.lit_submitit_launcher import LitSlurmLauncher, LostJobError

__all__ = ["LitSlurmLauncher", "LostJobError"]

# Hydra finds a plugin class by f"{cls.__module__}.{cls.__name__}" (hydra.core.plugins.Plugins._register) and the
# configs name the public package path (conf/hydra/launcher/slurm.yaml): register it under that name.
LitSlurmLauncher.__module__ = __name__
