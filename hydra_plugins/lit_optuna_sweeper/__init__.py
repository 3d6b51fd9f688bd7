"""Hydra sweeper plugin ``hydra/sweeper=lit_optuna``: current Optuna, ask-and-tell, persistent and shared studies."""

from hydra_plugins.lit_optuna_sweeper.lit_optuna_sweeper import LitOptunaSweeper

__all__ = ["LitOptunaSweeper"]
