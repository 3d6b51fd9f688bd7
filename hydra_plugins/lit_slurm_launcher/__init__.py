"""Hydra launcher plugin behind ``hydra/launcher=slurm``: submitit's SLURM launcher that refuses in one line where
there is no SLURM, before the sweep writes anything."""
