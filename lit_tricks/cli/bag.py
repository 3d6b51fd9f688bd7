"""Bagging in one command: train B members on bootstrap resamples of the training split, then test them as one bag.

  lit-tricks-bag --bags 5                                   # digits, the default recipe
  lit-tricks-bag --bags 3 --combine vote trainer.max_epochs=10 model=mlp --out logs/bag3
  lit-tricks-bag --bags 3 --eval-only --out logs/bag3       # re-test the members already there
Everything after the options is a Hydra override for every member. Writes bag.md and bag.json into the sweep
directory (default <LIT_TRICKS_LOG_DIR or logs>/bagging/multiruns/<time>) and prints the member vs bag table.
(In a checkout: python scripts/bag.py ...)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lit_tricks.cli.args import Parser
from lit_tricks.cli.noise import silence_third_party_noise
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.functional.ensemble import COMBINERS
from lit_tricks.sweeps.bagging import bag_markdown, evaluate_bag, train_bag


def _bags(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2 (members of the bag), got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = Parser("lit-tricks-bag", __doc__)
    parser.add_argument("--bags", type=_bags, default=5, help="number of members B (>= 2)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the first member; member i gets seed + i")
    parser.add_argument("--combine", default="mean_prob", choices=sorted(COMBINERS), help="how members combine")
    parser.add_argument("--out", type=Path, default=None, help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--eval-only", action="store_true", help="test the members already in --out")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every member, e.g. trainer.max_epochs=10")
    args = parser.parse_args(argv)
    silence_third_party_noise()
    out = args.out or Path(os.environ.get("LIT_TRICKS_LOG_DIR", "logs")) / "bagging" / "multiruns" / time.strftime(
        "%Y-%m-%d_%H-%M-%S")
    try:
        if not args.eval_only:
            train_bag(args.bags, out, args.seed, args.overrides)
        result = evaluate_bag(out, args.bags, combine=args.combine)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"lit-tricks-bag: {err}", file=sys.stderr)
        return 2
    markdown = bag_markdown(result)
    print(markdown, end="")
    atomic_write_bytes(markdown.encode(), out / "bag.md")
    atomic_write_bytes(json.dumps(result, indent=2).encode(), out / "bag.json")
    print(f"lit-tricks-bag: -> {out / 'bag.md'}")
    return 0 if result["bags_ok"] == args.bags else 1


if __name__ == "__main__":
    raise SystemExit(main())
