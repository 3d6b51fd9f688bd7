"""Learning curves and a bias/variance diagnosis from a finished run's CSV log.

Installed, the same command is ``lit-tricks-curves``; the logic lives in :mod:`lit_tricks.cli.curves`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.cli.curves import *  # noqa: F403 - re-exported for `import learning_curves`
from lit_tricks.cli.curves import main

if __name__ == "__main__":
    raise SystemExit(main())
