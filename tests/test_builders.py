"""Building a run's model from the config and the DataModule: a PCA preprocessor (a flat k-vector per sample) with an
image model is refused in one line that says what PCA outputs and which models take it (issue 25, defect 5)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lit_tricks.builders import build_model
from lit_tricks.data import DigitsDataModule
from lit_tricks.models import MLP
from lit_tricks.validation import ArgumentError


@pytest.fixture(scope="module")
def pca_digits() -> DigitsDataModule:
    dm = DigitsDataModule(preprocessing="pca", pca_components=12)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("model", [
    {"_target_": "lit_tricks.models.SmallCNN"},
    {"_target_": "lit_tricks.models.ConvNet1d"},
    {"_target_": "lit_tricks.models.GRU1d"},
    {"_target_": "lit_tricks.models.torchvision_model", "name": "resnet18"},
])
def test_pca_with_an_image_model_is_refused_in_one_line(pca_digits: DigitsDataModule, model: dict[str, str]) -> None:
    cfg = OmegaConf.create({"model": model, "data": {"preprocessing": "pca"}})
    with pytest.raises(ArgumentError) as err:
        build_model(cfg, pca_digits)
    problem = str(err.value)
    assert "\n" not in problem and err.value.arg == "data.preprocessing" and err.value.value == "pca"
    assert problem.startswith("data.preprocessing outputs a flat vector of 12 principal components per sample")
    assert "model=mlp, mlp_mnist1d or logreg_mnist1d" in problem and model["_target_"] in problem


def test_pca_with_an_mlp_builds_and_runs(pca_digits: DigitsDataModule) -> None:
    cfg = OmegaConf.create({"model": {"_target_": "lit_tricks.models.MLP", "hidden": [8]},
                            "data": {"preprocessing": "pca"}})
    model = build_model(cfg, pca_digits)
    assert isinstance(model, MLP)
    x = next(iter(pca_digits.train_dataloader()))[0]
    assert pca_digits.preprocessor is not None
    assert model(pca_digits.preprocessor(x)).shape == (x.shape[0], 10)
    assert torch.isfinite(model(pca_digits.preprocessor(x))).all()
