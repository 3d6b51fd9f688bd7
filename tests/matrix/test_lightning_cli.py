"""The LightningCLI example of docs/lightning_cli.md: its YAML (read from the page) adds the callbacks and fits."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from lit_tricks.callbacks import EarlyStopping, EMAWeights, GradientClipping, NaNGuard, RNGState
from tests.helpers.tiny import BlobsDataModule, TinyClassifier

DOC = Path(__file__).resolve().parents[2] / "docs" / "lightning_cli.md"


def test_lightning_cli_yaml_adds_the_callbacks_and_fits(tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "no yaml block in docs/lightning_cli.md"
    config = yaml.safe_load(block.group(1))
    config["trainer"].update(default_root_dir=str(tmp_path), limit_train_batches=3, limit_val_batches=2,
                             enable_model_summary=False)
    config["data"] = {"n": 128}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(TinyClassifier, BlobsDataModule, args=["fit", "--config", str(path)], seed_everything_default=0,
                       save_config_kwargs={"overwrite": True})
    by_type = {type(c): c for c in cli.trainer.callbacks}
    ema, es, clip = by_type[EMAWeights], by_type[EarlyStopping], by_type[GradientClipping]
    assert (ema.decay, ema.warmup, es.monitor, es.patience, clip.max_norm) == (0.9, True, "val/loss", 3, 1.0)
    assert by_type[NaNGuard].policy == "skip_step" and RNGState in by_type
    assert cli.trainer.global_step == 9 and ema.num_updates == 9 and clip.steps == 9
    assert es.best_epoch >= 0 and len(es.best_weights or {}) > 0
