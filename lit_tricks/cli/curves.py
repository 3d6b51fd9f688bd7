"""Learning curves and a bias/variance diagnosis from a finished run's CSV log.

Installed as ``lit-tricks-curves``.

    python scripts/learning_curves.py <run_dir or metrics.csv> [--target-error 0.01] [--out curves.png]

Reads Lightning's CSVLogger ``metrics.csv`` (the newest ``csv/version_*/metrics.csv`` under a run directory),
averages the per-step training values per epoch, takes the validation values per epoch, writes a PNG of train vs
val (raw and EMA-smoothed) and prints the diagnosis (high bias / high variance / both / fine) with remedies.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lit_tricks.callbacks.learning_curves import HISTORY_KEYS, diagnose_history, plot_learning_curves


def find_metrics_csv(path: Path) -> Path:
    """``path`` itself if it is a file, else the newest ``metrics.csv`` below it."""
    if path.is_file():
        return path
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"learning_curves: no metrics.csv under {path}")
    return found[-1]


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def history_from_csv(path: Path, keys: dict[str, str]) -> dict[str, list[float]]:
    """Per-epoch history (see ``HISTORY_KEYS``) from a CSVLogger file; ``keys`` maps history names to columns.

    A column ``<key>_epoch`` (Lightning's on_epoch value) wins over averaging the per-step ``<key>`` values.
    """
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = _float(row.get("epoch"))
            if not math.isfinite(epoch):
                continue
            for name, column in keys.items():
                for col in (f"{column}_epoch", column):
                    v = _float(row.get(col))
                    if math.isfinite(v):
                        values[f"{name}|{col}"][int(epoch)].append(v)
    epochs = sorted({e for series in values.values() for e in series})
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    history["epoch"] = [float(e) for e in epochs]
    for name, column in keys.items():
        epoch_series, step_series = values.get(f"{name}|{column}_epoch", {}), values.get(f"{name}|{column}", {})
        for e in epochs:
            if epoch_series.get(e):
                history[name].append(epoch_series[e][-1])
            elif step_series.get(e):
                vals = step_series[e]
                history[name].append(sum(vals) / len(vals) if name.startswith("train") else vals[-1])
            else:
                history[name].append(math.nan)
    return history


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="run directory or metrics.csv")
    parser.add_argument("--target-error", type=float, default=None, help="human-level / Bayes error (default 0)")
    parser.add_argument("--smoothing", type=float, default=0.6, help="EMA weight of the smoothed curves")
    parser.add_argument("--tolerance", type=float, default=0.02, help="error gap counted as high bias/variance")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default learning_curves.png beside the CSV)")
    parser.add_argument("--train-loss", default="train/loss")
    parser.add_argument("--val-loss", default="val/loss")
    parser.add_argument("--train-acc", default="train/acc")
    parser.add_argument("--val-acc", default="val/acc")
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")

    csv_path = find_metrics_csv(args.path)
    keys = {"train_loss": args.train_loss, "val_loss": args.val_loss, "train_acc": args.train_acc,
            "val_acc": args.val_acc}
    history = history_from_csv(csv_path, keys)
    if not history["epoch"]:
        raise SystemExit(f"learning_curves: no per-epoch rows in {csv_path}")
    diagnosis = diagnose_history(history, args.target_error, smoothing=args.smoothing,
                                 bias_tolerance=args.tolerance, variance_tolerance=args.tolerance)
    out = plot_learning_curves(history, args.out or csv_path.parent / "learning_curves.png", args.smoothing,
                               diagnosis.kind.replace("_", " ") if diagnosis else None)
    print(f"learning_curves: {len(history['epoch'])} epochs from {csv_path}")
    print(f"learning_curves: wrote {out}")
    print(diagnosis.message() if diagnosis else "learning_curves: no train/val pair logged to diagnose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
