"""Train one model from the Hydra config in conf/ (``python scripts/train.py optimizer.lr=0.05``)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lit_tricks.config_checks import ConfigError
from lit_tricks.run import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except ConfigError as err:
        print(f"lit_tricks: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
