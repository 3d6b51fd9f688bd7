"""Train one model from the Hydra config in conf/ (``python scripts/train.py optimizer.lr=0.05``).

Installed, the same command is ``lit-tricks-train``; the logic lives in :mod:`lit_tricks.cli.train`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.cli.train import main

if __name__ == "__main__":
    main()
