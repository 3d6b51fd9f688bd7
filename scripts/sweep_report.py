"""Report of a Hydra multirun: table sorted by the objective, plots, border warnings, narrowed ranges.

Installed, the same command is ``lit-tricks-report``; the logic lives in :mod:`lit_tricks.cli.report`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.cli.report import *  # noqa: F403 - re-exported for `import sweep_report`
from lit_tricks.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
