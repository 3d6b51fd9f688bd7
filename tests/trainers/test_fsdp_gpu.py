"""trainer=fsdp on a real GPU (skipped without CUDA): fit with global-norm clipping, a full checkpoint that loads
without FSDP (weights_only), and the Hydra-safe FSDP strategy's LR scaling."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_tricks.trainers.strategies import HydraSafeFSDPStrategy, fsdp_strategy
from tests.helpers.tiny import BlobsDataModule, TinyClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_fit_clips_by_global_norm_and_saves_a_full_checkpoint(tmp_path: Path) -> None:
    strategy = fsdp_strategy(timeout_s=120, auto_wrap_min_params=None, state_dict_type="full", scale_lr=True)
    assert isinstance(strategy, HydraSafeFSDPStrategy)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, strategy=strategy, max_epochs=1, limit_train_batches=4, limit_val_batches=1,
        gradient_clip_val=0.5, gradient_clip_algorithm="norm", logger=False, enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    model = TinyClassifier(lr=0.1)
    trainer.fit(model, datamodule=BlobsDataModule(n=128, batch_size=16))
    assert trainer.state.finished
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1)  # world size 1: factor 1
    ckpt_path = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    reference = TinyClassifier().state_dict()
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()} == {
        k: tuple(v.shape) for k, v in reference.items()
    }
