"""Bagging in one command: B members on bootstrap resamples, then the bag tested as one ensemble.

Installed, the same command is ``lit-tricks-bag``; the logic lives in :mod:`lit_tricks.cli.bag`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.cli.bag import main

if __name__ == "__main__":
    raise SystemExit(main())
