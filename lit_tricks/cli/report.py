"""Report of a Hydra multirun: table sorted by the objective, plots, border warnings, narrowed ranges.

Installed as ``lit-tricks-report``.

python scripts/sweep_report.py logs/train/multiruns/2026-01-01_12-00-00       (or: --latest)
Writes report.md, report.csv and objective.png into the sweep directory and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lit_tricks.sweeps.report import build_report, write_report


def latest_sweep(root: Path) -> Path:
    """The newest ``*/multiruns/<time>`` directory under ``root``."""
    sweeps = sorted(root.glob("*/multiruns/*"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise SystemExit(f"sweep_report: no multirun directory under {root}/*/multiruns/")
    return sweeps[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--latest", action="store_true", help="use the newest sweep under --log-dir")
    parser.add_argument("--log-dir", type=Path, default=Path(os.environ.get("LIT_TRICKS_LOG_DIR", "logs")))
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--top-fraction", type=float, default=0.25, help="best jobs that span the narrowed ranges")
    parser.add_argument("--edge", type=float, default=0.1, help="fraction of a range counted as its border")
    args = parser.parse_args(argv)
    if args.sweep_dir is None and not args.latest:
        parser.error("give a sweep directory or --latest")
    sweep_dir = latest_sweep(args.log_dir) if args.sweep_dir is None else args.sweep_dir
    try:
        report = build_report(sweep_dir, top_fraction=args.top_fraction, edge=args.edge)
    except (FileNotFoundError, ValueError) as err:
        print(f"sweep_report: {err}", file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print(report.markdown())
    for kind, path in paths.items():
        print(f"sweep_report: {kind} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
