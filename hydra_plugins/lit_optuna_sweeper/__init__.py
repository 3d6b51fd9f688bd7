"""Hydra sweeper plugin ``hydra/sweeper=lit_optuna``: current Optuna, ask-and-tell, persistent and shared studies."""

from hydra_plugins.lit_optuna_sweeper.lit_optuna_sweeper import LitOptunaSweeper

__all__ = ["LitOptunaSweeper"]

# Hydra finds a plugin class by f"{cls.__module__}.{cls.__name__}" (hydra.core.plugins.Plugins._register) and the
# configs name the public package path (conf/hydra/sweeper/lit_optuna.yaml): register it under that name.
LitOptunaSweeper.__module__ = __name__
