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
