"""Learning curves and a bias/variance diagnosis from a finished run's CSV log.

  lit-tricks-curves logs/train/runs/2026-01-01_12-00-00                   # a run directory (its csv/ log)
  lit-tricks-curves logs/train/runs/<time> --target-error 0.01 --out curves.png
  lit-tricks-curves logs/train/multiruns/train_tpe/3/csv/version_0/metrics.csv   # one sweep job
Reads Lightning's CSVLogger ``metrics.csv`` (the newest ``csv/version_*/metrics.csv`` under a run directory),
averages the per-step training values per epoch, takes the validation values per epoch, writes a PNG of train vs
val (raw and EMA-smoothed) and prints the diagnosis with remedies: on errors (1 - accuracy) when train and val
accuracy were logged, else on losses (variance only, unless --target-error gives a target in loss units).
(In a checkout: python scripts/learning_curves.py ...)
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lit_tricks.callbacks.learning_curves import HISTORY_KEYS, diagnose_history, plot_learning_curves
from lit_tricks.cli.args import Parser
from lit_tricks.functional.diagnosis import REMEDIES, Diagnosis


def find_metrics_csv(path: Path) -> Path:
    """``path`` itself if it is a file, else the newest ``metrics.csv`` below it."""
    if path.is_file():
        return path
    found = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"path={str(path)!r}: no metrics.csv there (a CSVLogger run: logger=csv)")
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


def loss_message(d: Diagnosis, target_given: bool) -> str:
    """The diagnosis of losses, labelled as losses: the variance always, the bias only against a given target."""
    high_var = d.kind in ("high_variance", "high_bias_and_variance")
    high_bias = target_given and d.kind in ("high_bias", "high_bias_and_variance")
    head = {(True, True): "high bias AND high variance",
            (True, False): "high variance (overfitting): validation loss is far above training loss",
            (False, True): "high bias (underfitting): training loss is far above the target",
            (False, False): "no large variance" if not target_given else "no large bias or variance"}[
        (high_var, high_bias)]
    numbers = f"train loss {d.train_error:.4f}, val loss {d.val_error:.4f} (variance {d.variance:+.4f})"
    if target_given:
        numbers += f", target loss {d.target_error:.4f} (avoidable bias {d.avoidable_bias:+.4f})"
    else:
        numbers += ("; bias not judged: a loss has no natural target (log train/acc and val/acc, or pass "
                    "--target-error in loss units)")
    kind = "high_bias_and_variance" if high_var and high_bias else "high_variance" if high_var else (
        "high_bias" if high_bias else None)
    remedies = "; ".join(REMEDIES[kind]) if kind else "none needed for the variance"
    return f"{head} (from losses: no train/val accuracy logged). {numbers}.\nremedies: {remedies}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser("lit-tricks-curves", __doc__)
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
        parser.error(f"argument --smoothing: must be in [0, 1), got {args.smoothing}")
    if args.tolerance < 0 or (args.target_error is not None and args.target_error < 0):
        parser.error(f"argument --tolerance/--target-error: must be >= 0, got {args.tolerance}, {args.target_error}")

    keys = {"train_loss": args.train_loss, "val_loss": args.val_loss, "train_acc": args.train_acc,
            "val_acc": args.val_acc}
    try:
        csv_path = find_metrics_csv(args.path)
        history = history_from_csv(csv_path, keys)
        if not history["epoch"]:
            raise ValueError(f"{csv_path}: no per-epoch rows")
    except (OSError, ValueError, csv.Error) as err:
        print(f"lit-tricks-curves: {err}", file=sys.stderr)
        return 2
    diagnosis = diagnose_history(history, args.target_error, smoothing=args.smoothing,
                                 bias_tolerance=args.tolerance, variance_tolerance=args.tolerance)
    out = plot_learning_curves(history, args.out or csv_path.parent / "learning_curves.png", args.smoothing,
                               diagnosis.kind.replace("_", " ") if diagnosis else None)
    print(f"lit-tricks-curves: {len(history['epoch'])} epochs from {csv_path}")
    print(f"lit-tricks-curves: wrote {out}")
    if diagnosis is None:
        print("lit-tricks-curves: no train/val pair logged to diagnose")
    elif any(math.isfinite(v) for v in history["train_acc"]) and any(math.isfinite(v) for v in history["val_acc"]):
        print(diagnosis.message())
    else:
        print(loss_message(diagnosis, args.target_error is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
