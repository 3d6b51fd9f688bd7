"""Choose a run's EMA length after training, from its PostHocEMA snapshots (EDM2's post-hoc EMA).

Installed as ``lit-tricks-posthoc-ema``.

    lit-tricks-posthoc-ema RUN_DIR --sigma-rel 0.02,0.05,0.1,0.2

Rebuilds the run's data and module from ``RUN_DIR/config_resolved.yaml``, synthesizes the EMA of each sigma_rel from
the snapshots under RUN_DIR (the paper's least-squares solve in float64), scores each on the validation and test
splits (BatchNorm recalibrated on the train split when the model has BatchNorm), and writes into RUN_DIR/posthoc_ema:
posthoc_ema.md (the table), posthoc_ema.png (score vs length), posthoc_ema.json and posthoc-ema-best.ckpt (the best
by --select; ``module.load_state_dict(torch.load(path)["state_dict"])`` or ``trainer.test(ckpt_path=path)``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from lit_tricks.cli.args import Parser
from lit_tricks.posthoc.ema import SELECT


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from err
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = Parser("lit-tricks-posthoc-ema", __doc__)
    parser.add_argument("run_dir", type=Path, help="a lit_tricks run directory (config_resolved.yaml, snapshots)")
    parser.add_argument("--sigma-rel", type=_floats, default=[0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2],
                        help="EMA lengths to synthesize, comma-separated, each in (0, 0.2887]")
    parser.add_argument("--select", default="val/acc", choices=SELECT,
                        help="what the best is chosen by (a test/... choice selects on the test split)")
    parser.add_argument("--step", type=int, default=None, help="reconstruct at this snapshot's step (default last)")
    parser.add_argument("--snapshots", type=Path, default=None, help="the snapshot folder (default: found under "
                        "RUN_DIR)")
    parser.add_argument("--bn-batches", type=int, default=None, help="train batches for BatchNorm recalibration "
                        "(default: one pass)")
    parser.add_argument("--reference", type=Path, default=None, help="a checkpoint to score beside, e.g. the run's "
                        "ema-last.ckpt")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/posthoc_ema)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata's loaders, as lit_tricks.run
    from lit_tricks.posthoc.ema import find_snapshot_dir, posthoc_ema_report
    from lit_tricks.posthoc.evaluate import load_state, rebuild_run

    try:
        snapshots = args.snapshots or find_snapshot_dir(args.run_dir)
        reference = load_state(args.reference) if args.reference is not None else None
        _, dm, module = rebuild_run(args.run_dir)
        result = posthoc_ema_report(snapshots, module, dm, args.sigma_rel, args.out or args.run_dir / "posthoc_ema",
                                    select=args.select, step=args.step, bn_batches=args.bn_batches,
                                    reference=reference, reference_name=str(args.reference))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"lit-tricks-posthoc-ema: {err}", file=sys.stderr)
        return 2
    print(Path(result["table"]).read_text(), end="")
    best = result["best"]
    print(f"lit-tricks-posthoc-ema: best sigma_rel={best['sigma_rel']:g} by {args.select}="
          f"{best[args.select]:.4f} ({result['snapshots']} snapshots) -> {result['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
