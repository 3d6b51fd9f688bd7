"""Hydra plugin: puts lit_tricks' config groups (pkg://lit_tricks.conf) on every Hydra app's search path.

After ``pip install lit_tricks`` any ``@hydra.main`` app can say ``defaults: [optimizer: adamw, scheduler: cosine]``
or ``python my_app.py +callbacks=ema`` and get lit_tricks' YAMLs; the app's own configs still win on name clashes.
The presets start from base configs generated from the code's signatures (``base/...``, see
:mod:`lit_tricks.config_bases`); they are stored here, before any config is composed.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

__all__ = ["LitTricksSearchPathPlugin"]


class LitTricksSearchPathPlugin(SearchPathPlugin):
    """Append lit_tricks' packaged ``conf/`` to the config search path and store its base configs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from lit_tricks.config_bases import register_bases

        register_bases()
        search_path.append(provider="lit_tricks", path="pkg://lit_tricks.conf")
