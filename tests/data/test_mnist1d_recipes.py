"""experiment=mnist1d_baseline against an independent oracle: the paper's training loop in plain torch.

``benchmarks/mnist1d_reference.py`` re-implements the mnist1d repository's ConvBase and ``train_model`` loop without
Lightning or lit_tricks (fixed-order batches, Adam 1e-2). With the same seed, the recipe must train the same model:
same initial weights (seeded before the model is built), same batches in the same order, same updates, so the same
test loss and accuracy after the same number of steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_tricks.records import read_record
from lit_tricks.run import train

pytest.importorskip("mnist1d")

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.timeout(240)
def test_paper_recipe_trains_what_the_plain_torch_loop_trains(tmp_path: Path) -> None:
    from benchmarks.mnist1d_reference import load_dataset, train_one

    epochs, seed = 3, 3  # 120 steps of 100 samples
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mnist1d_baseline", f"seed={seed}", f"trainer.max_epochs={epochs}",
                                          "logger=none", f"data.data_dir={tmp_path / 'data'}",
                                          f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"])
    train(cfg)
    ours = read_record(tmp_path / "metrics.json")["metrics"]
    ref = train_one(load_dataset(), seed, steps=epochs * 40)
    assert ours["test/acc"] == pytest.approx(ref["acc"], abs=1e-6)
    assert ours["test/loss"] == pytest.approx(ref["loss"], rel=1e-4)
    # reshuffling every epoch (the DataModule's default) is a different recipe: the oracle tells them apart
    shuffled = train_one(load_dataset(), seed, steps=epochs * 40, shuffle=True)
    assert shuffled["loss"] != pytest.approx(ref["loss"], rel=1e-4)


def _explored(experiment: str) -> dict[str, object]:
    """The composed ``experiment`` in the fields of ``benchmarks.mnist1d_explore.Recipe`` (what the search trained)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    steps = {next(iter(s)): next(iter(s.values())) for s in cfg.augment.steps}
    assert set(steps) <= {"shift", "shear", "noise"}, steps  # the search's scale/stretch/mixup are not in the presets
    assert steps["shift"]["mode"] == "roll" and cfg.data.shuffle and cfg.data.val_size == 0
    assert cfg.scheduler.warmup == "cosine" and cfg.scheduler.body._target_.endswith("CosineDecay")
    assert cfg.module.decoupled and cfg.callbacks.clipping.mode == "norm" and cfg.module.batch_augment is None
    ema = cfg.callbacks.ema
    assert ema.warmup and ema.buffers == "copy" and ema.update_every_n_steps == 1 and ema.start_step == 0
    n_train = 4000  # all training samples: val_size 0
    norm = cfg.module.norm  # "batch" (after every conv) or {kind: batch, layers: [...]} (ConvNet1d's convs)
    layers = "012" if isinstance(norm, str) else "".join(str(["features.0", "features.2", "features.4"].index(p))
                                                           for p in norm.layers)
    return {
        "steps": cfg.trainer.max_epochs * -(-n_train // cfg.data.batch_size), "batch_size": cfg.data.batch_size,
        "norm": (norm if isinstance(norm, str) else norm.kind) == "batch", "norm_layers": layers,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower(),
        "lr": cfg.optimizer.lr, "beta1": cfg.optimizer.betas[0], "beta2": cfg.optimizer.betas[1],
        "weight_decay": cfg.module.weight_decay, "warmup": cfg.scheduler.warmup_fraction,
        "start_factor": cfg.scheduler.start_factor, "end_factor": cfg.scheduler.body.end_factor,
        "label_smoothing": cfg.module.label_smoothing, "dropout": cfg.module.dropout or 0.0,
        "shift": steps["shift"]["max_shift"], "noise": steps.get("noise", {}).get("sigma", 0.0),
        "shear": steps.get("shear", {}).get("max_shear", 0.0), "scale": 0.0, "stretch": 0.0,
        "clip": cfg.callbacks.clipping.max_norm, "ema": cfg.callbacks.ema.decay, "mixup": 0.0,
        "cycles": 1,  # one warm-up + one cosine body (asserted above): no restarts
    }


@pytest.mark.parametrize(("experiment", "name"), [("mnist1d_tricks", "TRICKS"), ("mnist1d_fast", "FAST")])
def test_presets_are_the_recipes_the_plain_torch_search_chose(experiment: str, name: str) -> None:
    """``experiment=mnist1d_tricks`` / ``mnist1d_fast`` train what benchmarks/mnist1d_explore.py validated on folds:
    every field of its ``Recipe`` (steps, batch, optimizer, schedule, augmentation, smoothing, clipping, EMA)."""
    import dataclasses

    from benchmarks import mnist1d_explore

    chosen = dataclasses.asdict(getattr(mnist1d_explore, name))
    assert _explored(experiment) == pytest.approx(chosen)


@pytest.mark.timeout(240)
def test_tricks_recipe_foreach_optimizer_takes_the_for_loop_steps(tmp_path: Path) -> None:
    """``optimizer.foreach: true`` in the tricks recipe is speed only: torch's own for-loop AdamW (its CPU default),
    the oracle, trains the same model bit for bit (same test loss, not approximately)."""
    results = {}
    for foreach in ("true", "false"):
        out = tmp_path / foreach
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=mnist1d_tricks", "seed=1", "trainer.max_steps=60",
                                              f"optimizer.foreach={foreach}", "logger=none",
                                              f"data.data_dir={tmp_path / 'data'}", f"paths.output_dir={out}",
                                              f"paths.log_dir={out}"])
        assert cfg.optimizer.foreach is (foreach == "true")
        train(cfg)
        results[foreach] = read_record(out / "metrics.json")["metrics"]
    assert results["true"]["test/loss"] == results["false"]["test/loss"]
    assert results["true"]["test/acc"] == results["false"]["test/acc"]


@pytest.mark.parametrize("experiment", ["mnist1d_tricks", "mnist1d_fast"])
@pytest.mark.parametrize("optimizer", ["lbfgs", "newton", "sgd"])
def test_tricks_recipes_compose_with_another_optimizer(experiment: str, optimizer: str) -> None:
    """The recipes' foreach AdamW is a preset of the optimizer group, so another optimizer (some take no ``foreach``
    argument) replaces it whole instead of failing to compose."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"optimizer={optimizer}"])
    names = {"lbfgs": "LBFGS", "newton": "NewtonOptimizer", "sgd": "SGD"}
    assert cfg.optimizer._target_.rsplit(".", 1)[-1] == names[optimizer]
    assert cfg.optimizer.get("foreach") in (None, False)  # torch's default, not the recipe's AdamW choice
