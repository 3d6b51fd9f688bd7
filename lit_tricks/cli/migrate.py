"""Rewrite the old ``_target_`` paths of saved run folders.

  lit-tricks-migrate logs/train/runs/2026-01-01_12-00-00             # one run folder
  lit-tricks-migrate logs/train/multiruns/train_tpe --dry-run        # every job of a sweep; print, write nothing

Each run folder's ``.hydra/config.yaml`` and ``config_resolved.yaml`` get every ``_target_`` that names a module or
removed path (``lit_tricks.callbacks.ema.EMAWeights``, ``lit_tricks.sweeps.ddp.ddp_strategy``) rewritten to the
public package path (``lit_tricks.callbacks.EMAWeights``, ``lit_tricks.trainers.ddp_strategy``); a sweep folder is
migrated job by job (every folder below it holding a ``.hydra/config.yaml``). ``--dry-run`` only prints.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lit_tricks.cli.args import Parser
from lit_tricks.migrate import migrate_run

__all__ = ["main"]


def _run_dirs(path: Path) -> list[Path]:
    """``path`` when it is a run folder, else every run folder below it (a sweep)."""
    if (path / ".hydra" / "config.yaml").is_file() or (path / "config_resolved.yaml").is_file():
        return [path]
    return sorted(p.parent.parent for p in path.glob("**/.hydra/config.yaml"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser("lit-tricks-migrate", __doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    changed = 0
    for root in args.run_dirs:
        runs = _run_dirs(root)
        if not runs:
            print(f"lit-tricks-migrate: {root}: no .hydra/config.yaml or config_resolved.yaml below it",
                  file=sys.stderr)
            return 2
        for run in runs:
            for line in migrate_run(run, dry_run=args.dry_run):
                print(f"{run / line}")
                changed += 1
    done = "to rewrite" if args.dry_run else "rewritten"
    print(f"lit-tricks-migrate: {changed} _target_{'s' * (changed != 1)} {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
