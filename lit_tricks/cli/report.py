"""Report of a sweep: table sorted by the objective, plots, border warnings, narrowed ranges.

  lit-tricks-report logs/train/multiruns/train_tpe     # hparams_search=tpe: logs/<task>/multiruns/<study name>
  lit-tricks-report --latest                           # the newest sweep under $LIT_TRICKS_LOG_DIR (default logs)
Writes report.md, report.csv and objective.png into the sweep directory and prints the markdown.
(In a checkout: python scripts/sweep_report.py ...)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from lit_tricks.cli.args import Parser, fraction, positive_int
from lit_tricks.sweeps.report import build_report, write_report


def latest_sweep(root: Path) -> Path:
    """The newest ``*/multiruns/<time>`` directory under ``root``."""
    sweeps = sorted(root.glob("*/multiruns/*"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"--log-dir={str(root)!r}: no sweep under {root}/*/multiruns/")
    return sweeps[-1]


def main(argv: list[str] | None = None) -> int:
    parser = Parser("lit-tricks-report", __doc__)
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--latest", action="store_true", help="use the newest sweep under --log-dir")
    parser.add_argument("--log-dir", type=Path, default=Path(os.environ.get("LIT_TRICKS_LOG_DIR", "logs")))
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--top-fraction", type=fraction, default=0.25, help="best jobs that span the narrowed ranges")
    parser.add_argument("--edge", type=float, default=0.1, help="fraction of a range counted as its border")
    parser.add_argument("--jobs-per-dim", type=positive_int, default=5,
                        help="ranked jobs needed per searched hyperparameter before ranges are narrowed")
    parser.add_argument("--no-sigma-rel", action="store_true",
                        help="one row per job even when jobs scored post-hoc EMA lengths (default: a row per length)")
    args = parser.parse_args(argv)
    if args.sweep_dir is None and not args.latest:
        parser.error("give a sweep directory or --latest")
    try:
        sweep_dir = latest_sweep(args.log_dir) if args.sweep_dir is None else args.sweep_dir
        report = build_report(sweep_dir, top_fraction=args.top_fraction, edge=args.edge,
                              jobs_per_dim=args.jobs_per_dim, sigma_rel=not args.no_sigma_rel)
    except (FileNotFoundError, ValueError) as err:
        print(f"lit-tricks-report: {err}", file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print(report.markdown())
    for kind, path in paths.items():
        print(f"lit-tricks-report: {kind} -> {path}")
    if "plot" not in paths and importlib.util.find_spec("matplotlib") is None:
        print("lit-tricks-report: no objective.png: matplotlib is not installed (lit_tricks' plots extra: "
              "pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
