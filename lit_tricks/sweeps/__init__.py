"""Sweeps and clusters: Hydra + DDP safety, multirun reports, coarse-to-fine ranges, ensembles from sweeps."""

__all__: list[str] = []
