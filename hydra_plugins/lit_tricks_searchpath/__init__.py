"""Hydra plugin: puts lit_tricks' config groups (pkg://lit_tricks.conf) on every Hydra app's search path.

After ``pip install lit_tricks`` any ``@hydra.main`` app can say ``defaults: [optimizer: adamw, scheduler: cosine]``
or ``python my_app.py +callbacks=ema`` and get lit_tricks' YAMLs; the app's own configs still win on name clashes.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

__all__ = ["LitTricksSearchPathPlugin"]


class LitTricksSearchPathPlugin(SearchPathPlugin):
    """Append lit_tricks' packaged ``conf/`` to the config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lit_tricks", path="pkg://lit_tricks.conf")
