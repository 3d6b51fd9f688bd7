"""Evaluate the top-k checkpoints of a sweep as one ensemble on the test split.

Installed, the same command is ``lit-tricks-ensemble``; the logic lives in :mod:`lit_tricks.cli.ensemble`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.cli.ensemble import *  # noqa: F403 - re-exported for `import ensemble_from_sweep`
from lit_tricks.cli.ensemble import main

if __name__ == "__main__":
    raise SystemExit(main())
