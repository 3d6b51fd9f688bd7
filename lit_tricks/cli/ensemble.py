"""Evaluate the top-k checkpoints of a sweep as one ensemble on the test split.

  lit-tricks-ensemble logs/train/multiruns/train_tpe --top-k 3     # hparams_search=tpe's sweep directory
  lit-tricks-ensemble logs/search_final/multiruns/final --combine vote
Prints each member's own test accuracy and the ensemble's; writes ensemble.json into the sweep directory.
(In a checkout: python scripts/ensemble_from_sweep.py ...)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lit_tricks.cli.args import Parser, positive_int
from lit_tricks.cli.noise import silence_third_party_noise
from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.functional.ensemble import COMBINERS
from lit_tricks.sweeps.ensemble import evaluate_sweep_ensemble


def main(argv: list[str] | None = None) -> int:
    parser = Parser("lit-tricks-ensemble", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory (hydra.sweep.dir)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="how many of the best jobs to ensemble")
    parser.add_argument("--combine", default="mean_prob", choices=sorted(COMBINERS), help="how members combine")
    args = parser.parse_args(argv)
    silence_third_party_noise()
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


if __name__ == "__main__":
    raise SystemExit(main())
