"""Parts written separately, checked together through the real config: SGDR cycle ends -> snapshot ensemble."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from lit_tricks.builders import build_callbacks, build_datamodule, build_model, build_module
from lit_tricks.callbacks import CheckpointEnsemble
from lit_tricks.trainers.build import build_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.timeout(180)
def test_sgdr_cycle_ends_make_one_member_each_with_gradient_accumulation(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "scheduler=sgdr", "scheduler.T_0=2", "scheduler.T_mult=2", "callbacks=[default,checkpoint_ensemble]",
            "callbacks.checkpoint_ensemble.every_n_epochs=null", "callbacks.checkpoint_ensemble.at_cycle_ends=true",
            "trainer.max_epochs=6", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=4",
            "logger=none", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
        ])
    with open_dict(cfg):
        cfg.callbacks.lr_monitor = None
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, dm), dm)
    callbacks = build_callbacks(cfg)
    trainer = build_trainer(cfg, callbacks, False)
    trainer.fit(module, datamodule=dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    # 4 batches / 2 accumulated = 2 optimizer steps an epoch; cycles of 2 and 4 epochs end at steps 4 and 12
    assert scheduler.cycle_ends()[:2] == [4, 12]
    ensemble = next(c for c in callbacks if isinstance(c, CheckpointEnsemble))
    assert len(ensemble.member_paths()) == 2
    first, second = ensemble.member_state_dicts()
    assert any(not torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(("preset", "shape"), [("digits", (1, 8, 8)), ("cifar_basic", (3, 32, 32)),
                                               ("cifar_strong", (3, 32, 32))])
def test_augment_presets_really_change_the_images(preset: str, shape: tuple[int, int, int]) -> None:
    """A preset that rounds to the identity (e.g. sub-pixel shifts with nearest interpolation on 8x8) is a no-op."""
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"augment={preset}"])
    pipeline = instantiate(cfg.augment)
    torch.manual_seed(0)
    images = torch.rand(16, *shape)
    changed = sum(not torch.equal(pipeline(x), x) for x in images)
    assert changed >= 12, f"augment={preset} changed only {changed} of 16 images"
