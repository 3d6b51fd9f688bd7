"""trainer=fsdp (FSDP1) and trainer=fsdp2 (ModelParallelStrategy) on a real GPU (skipped without CUDA).

FSDP1: Lightning 2.6's ``FSDPPrecision.clip_grad_by_norm`` raises (the norm would be per shard), so the fit clips by
value; the full checkpoint loads without FSDP; the Hydra-safe strategy's LR scaling. FSDP2: the same module sharded
by ``configure_model`` (TrickModule ``shard=auto``), clipping by the global norm (Lightning's ``gradient_clip_val``),
EMAWeights keeping fp32 DTensor shards of bf16 weights, and a full-file checkpoint with its ``ema-`` twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_tricks.callbacks import EMAWeights
from lit_tricks.fault.ema_checkpoint import ema_checkpoint_path
from lit_tricks.functional.sharded import is_dtensor, local
from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.trainers.strategies import HydraSafeFSDPStrategy, fsdp_strategy, model_parallel_strategy
from tests.helpers.tiny import BlobsDataModule, TinyClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU")


def _trainer(tmp_path: Path, strategy: Any, **kw: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="gpu", devices=1, strategy=strategy, max_epochs=1, limit_train_batches=4,
                      limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      **kw)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp1_fit_clips_by_value_refuses_norm_and_saves_a_full_checkpoint(tmp_path: Path) -> None:
    strategy = fsdp_strategy(timeout_s=120, auto_wrap_min_params=None, state_dict_type="full", scale_lr=True)
    assert isinstance(strategy, HydraSafeFSDPStrategy)
    trainer = _trainer(tmp_path, strategy, gradient_clip_val=0.5, gradient_clip_algorithm="value")
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
    norm = _trainer(tmp_path / "norm", fsdp_strategy(timeout_s=120, auto_wrap_min_params=None),
                    gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    with pytest.raises(MisconfigurationException, match="gradient_clip_algorithm='norm'"):
        norm.fit(TinyClassifier(), datamodule=BlobsDataModule(n=128, batch_size=16))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp2_fit_clips_by_global_norm_keeps_an_fp32_ema_and_saves_full_files(tmp_path: Path) -> None:
    strategy = model_parallel_strategy(timeout_s=120, save_distributed_checkpoint=False)
    ema = EMAWeights(decay=0.9, apply_at_end=False)
    trainer = _trainer(tmp_path, strategy, precision="bf16-true", gradient_clip_val=0.5, callbacks=[ema])
    model = TrickModule(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), num_classes=3)
    trainer.fit(model, datamodule=BlobsDataModule(n=128, batch_size=16))
    assert all(is_dtensor(p) and p.dtype == torch.bfloat16 for p in model.parameters())
    shadows = list(ema.state.ema_params)
    assert all(is_dtensor(e) and e.dtype == torch.float32 and local(e).is_cuda for e in shadows)
    last = Path(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert last.is_file() and ema_checkpoint_path(last).is_file()
    twin = torch.load(ema_checkpoint_path(last), weights_only=True, map_location="cpu")
    assert twin["state_dict"]["model.0.weight"].dtype == torch.bfloat16  # the twin: the model's dtype
