"""Bagging in one command: train B members on bootstrap resamples of the training split, then test them as one bag.

Installed as ``lit-tricks-bag``.

python scripts/bag.py --bags 5                                   # digits, the default recipe
python scripts/bag.py --bags 3 --combine vote trainer.max_epochs=10 model=mlp
Everything after the options is a Hydra override for every member. Writes bag.md and bag.json into the sweep
directory (default <LIT_TRICKS_LOG_DIR or logs>/bagging/multiruns/<time>) and prints the member vs bag table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.sweeps.bagging import bag_markdown, evaluate_bag, train_bag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bags", type=int, default=5, help="number of members B (>= 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first member; member i gets seed + i")
    parser.add_argument("--combine", default="mean_prob", help="mean_prob | mean_logit | vote")
    parser.add_argument("--out", type=Path, default=None, help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--eval-only", action="store_true", help="test the members already in --out")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every member, e.g. trainer.max_epochs=10")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("LIT_TRICKS_LOG_DIR", "logs")) / "bagging" / "multiruns" / time.strftime(
        "%Y-%m-%d_%H-%M-%S")
    try:
        if not args.eval_only:
            train_bag(args.bags, out, args.seed, args.overrides)
        result = evaluate_bag(out, args.bags, combine=args.combine)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"bag: {err}", file=sys.stderr)
        return 2
    markdown = bag_markdown(result)
    print(markdown, end="")
    atomic_write_bytes(markdown.encode(), out / "bag.md")
    atomic_write_bytes(json.dumps(result, indent=2).encode(), out / "bag.json")
    print(f"bag: -> {out / 'bag.md'}")
    return 0 if result["bags_ok"] == args.bags else 1


if __name__ == "__main__":
    raise SystemExit(main())
