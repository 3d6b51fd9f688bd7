"""Hydra launcher plugin ``hydra/launcher=slurm``: submitit's SLURM launcher whose sweep outlives a lost job."""

from hydra_plugins.lit_submitit_launcher.lit_submitit_launcher import LitSlurmLauncher, LostJobError

__all__ = ["LitSlurmLauncher", "LostJobError"]
