"""Evaluate the top-k checkpoints of a sweep as one ensemble on the test split.

  lit-tricks-ensemble logs/train/multiruns/train_tpe --top-k 3     # hparams_search=tpe's sweep directory
  lit-tricks-ensemble logs/search_final/multiruns/final --combine vote
  lit-tricks-ensemble logs/train/multiruns/train_tpe --soup        # uniform and greedy weight soups beside it
Prints each member's own test accuracy and the ensemble's; writes ensemble.json into the sweep directory.
(In a checkout: python scripts/ensemble_from_sweep.py ...)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lit_tricks.cli.args import Parser, positive_int
from lit_tricks.cli.noise import silence_third_party_noise
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.functional.ensemble import COMBINERS
from lit_tricks.posthoc.soup import SOUP_SELECT
from lit_tricks.sweeps.ensemble import evaluate_sweep_ensemble


def main(argv: list[str] | None = None) -> int:
    parser = Parser("lit-tricks-ensemble", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="how many of the best jobs to ensemble")
    parser.add_argument("--combine", default="mean_prob", choices=sorted(COMBINERS), help="how members combine")
    parser.add_argument("--soup", action="store_true", help="instead: best member, uniform soup, greedy soup and "
                        "prediction ensemble side by side on val/test (members must share an initialization); "
                        "SWEEP_DIR may also be one run's directory (its CheckpointEnsemble snapshot members)")
    parser.add_argument("--select", default="val/acc", choices=list(SOUP_SELECT),
                        help="--soup: what the greedy soup adds by")
    args = parser.parse_args(argv)
    silence_third_party_noise()
    if args.soup:
        return _soup(args)
    try:
        result = evaluate_sweep_ensemble(args.sweep_dir, top_k=args.top_k, combine=args.combine)
    except (FileNotFoundError, ValueError) as err:
        print(f"lit-tricks-ensemble: {err}", file=sys.stderr)
        return 2
    for m in result["members"]:
        print(f"member job {m['job']}: objective {m['objective']:.4f}  test/acc {m['test/acc']:.4f}  {m['checkpoint']}")
    print(f"ensemble of {len(result['members'])} ({result['combine']}): "
          f"test/acc_ensemble {result.get('test/acc_ensemble', float('nan')):.4f}  "
          f"(best single model test/acc {result.get('test/acc', float('nan')):.4f})")
    out = args.sweep_dir / "ensemble.json"
    atomic_write_bytes(json.dumps(result, indent=2).encode(), out)
    print(f"lit-tricks-ensemble: -> {out}")
    return 0


def _soup(args: argparse.Namespace) -> int:
    """``--soup``: soups of a sweep's top-k jobs, or of one run's snapshot members (lit_tricks.posthoc.soup)."""
    from lit_tricks.posthoc.soup import evaluate_run_soups
    from lit_tricks.sweeps.ensemble import evaluate_sweep_soups

    one_run = (args.sweep_dir / "config_resolved.yaml").is_file()
    try:
        result = (evaluate_run_soups(args.sweep_dir, select=args.select, combine_method=args.combine) if one_run
                  else evaluate_sweep_soups(args.sweep_dir, args.top_k, select=args.select, combine=args.combine))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"lit-tricks-ensemble: {err}", file=sys.stderr)
        return 2
    out = args.sweep_dir / ("soup" if one_run else "")
    print((out / "soup.md").read_text(), end="")
    print(f"greedy soup: {', '.join(result['greedy_members'])} (by {args.select}) -> {out / 'soup.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
