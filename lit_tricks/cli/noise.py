"""Silence what a ``lit-tricks-*`` user cannot act on: lines other libraries print on every run.

- Lightning's own use of a deprecated torch API (``isinstance(treespec, LeafSpec)`` in ``lightning.pytorch``'s
  ``_pytree``): Lightning's to fix, printed on every fit.
- Lightning's litlogger advertisement (``💡 Tip: ... litlogger``), printed by every Trainer.
- ``weights_only was not set, defaulting to False``: Lightning's note on every ``trainer.save_checkpoint`` that
  does not pass it (the Preemption callback's checkpoint), a full training checkpoint as intended.

(Optuna's ``ExperimentalWarning`` on ``heartbeat_interval`` is silenced where the sweeper opens its storage.) Only
these exact messages go; every other warning and log line stays. Called by the commands' ``main``; a library
user's own process is left alone.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["NOISE", "silence_third_party_noise"]

#: Regular expressions of the messages dropped, with the loggers that print the log-line ones.
NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Tip: For seamless cloud logging .*litlogger",
    r"`weights_only` was not set, defaulting to `False`",
)
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
            "lightning_utilities.core.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector")
_PATTERN = re.compile("|".join(NOISE), flags=re.S)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _PATTERN.search(record.getMessage())


_FILTER = _DropNoise()


def silence_third_party_noise() -> None:
    """Install the warning filters and logging filters for :data:`NOISE` (idempotent)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
