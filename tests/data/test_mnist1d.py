"""MNIST-1D DataModule: shapes, the package's exact test split, caching, no test leakage, global RNG untouched."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lit_tricks.data import MNIST1DDataModule
from lit_tricks.data import mnist1d as mnist1d_module
from lit_tricks.data.mnist1d import MNIST1D_DEFAULTS

mnist1d = pytest.importorskip("mnist1d")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mnist1d_data")


SMALL = {"num_samples": 500, "max_translation": 40}  # a 400/100 dataset: 10x cheaper to generate twice


@pytest.fixture(scope="module")
def package_data() -> dict[str, Any]:
    """The package's own ``make_dataset`` with ``get_dataset_args()`` changed by SMALL."""
    state = random.getstate(), np.random.get_state()
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in SMALL.items():
        setattr(args, key, value)
    data = make_dataset(args)
    random.setstate(state[0])
    np.random.set_state(state[1])
    return data  # type: ignore[no-any-return]


def _dm(cache_dir: Path, **kwargs: Any) -> MNIST1DDataModule:
    dm = MNIST1DDataModule(data_dir=str(cache_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_defaults_are_the_packages() -> None:
    from mnist1d.data import get_dataset_args

    package = get_dataset_args(as_dict=True)
    package.pop("url")
    assert package == MNIST1D_DEFAULTS
    assert MNIST1DDataModule().generation_args == MNIST1D_DEFAULTS


def test_default_shapes(cache_dir: Path) -> None:
    dm = _dm(cache_dir)
    assert dm.num_classes == 10 and dm.dims == (1, 1, 40)
    train, test = dm.dataset("train"), dm.dataset("test")
    assert len(train) == 4000 and len(test) == 1000 and dm.split_indices["val"].numel() == 0
    assert dm.val_dataloader() == []
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (100, 1, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.bincount(dm.test_source.targets, minlength=10).min() > 0  # type: ignore[union-attr]


def test_train_and_test_are_exactly_the_packages_splits(tmp_path: Path, package_data: dict[str, Any]) -> None:
    dm = _dm(tmp_path, **SMALL)
    train = dm.dataset("train")
    test_x = torch.cat([b[0] for b in dm.test_dataloader()]).reshape(100, 40)
    test_y = torch.cat([b[1] for b in dm.test_dataloader()])
    assert torch.equal(test_x, torch.as_tensor(package_data["x_test"], dtype=torch.float32))
    assert torch.equal(test_y, torch.as_tensor(package_data["y_test"]))
    train_x = train.source.batch(train.indices).reshape(400, 40)
    assert torch.equal(train_x, torch.as_tensor(package_data["x"], dtype=torch.float32))


def test_validation_split_is_stratified_and_never_touches_test(cache_dir: Path) -> None:
    dm = _dm(cache_dir, val_size=500, split_seed=3)
    train, val = dm.split_indices["train"], dm.split_indices["val"]
    assert train.numel() == 3500 and val.numel() == 500 and not set(train.tolist()) & set(val.tolist())
    targets = dm.source.targets  # type: ignore[union-attr]
    assert (torch.bincount(targets[val], minlength=10) - 50).abs().max() <= 1  # stratified: ~50 per class
    # the pool that train/val index is the package's training split only: no test row among them
    pool = dm.source.batch(torch.arange(4000)).reshape(4000, 40)  # type: ignore[union-attr]
    test = dm.test_source.batch(torch.arange(1000)).reshape(1000, 40)  # type: ignore[union-attr]
    assert not (torch.cdist(test, pool).min(dim=1).values < 1e-6).any()
    assert torch.equal(_dm(cache_dir, val_size=500, split_seed=3).split_indices["val"], val)
    assert not torch.equal(_dm(cache_dir, val_size=500, split_seed=4).split_indices["val"], val)
    with pytest.raises(ValueError, match="val_size"):
        MNIST1DDataModule(val_size=4000)
    with pytest.raises(ValueError, match="val_size instead"):
        MNIST1DDataModule(test_fraction=0.2)


def test_cache_is_keyed_by_the_generation_arguments(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _dm(cache_dir)
    path = dm.cache_path()
    assert path is not None and path.is_file() and path.parent == cache_dir / "mnist1d"

    def boom(args: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d_module, "generate_mnist1d", boom)
    monkeypatch.setattr(mnist1d_module, "_MEMORY", {})
    again = _dm(cache_dir)  # read back from the cache, not generated
    assert torch.equal(again.arrays()["x"], dm.arrays()["x"])
    other = MNIST1DDataModule(data_dir=str(cache_dir), shuffle_seq=True)
    assert other.cache_path() != path
    with pytest.raises(AssertionError, match="regenerated"):
        other.prepare_data()  # other arguments: not served from the default dataset's cache


def test_generation_leaves_the_global_rngs_alone(tmp_path: Path) -> None:
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = random.random(), float(np.random.rand()), float(torch.rand(()))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    dm = MNIST1DDataModule(data_dir=None, num_samples=200, shuffle_seq=True)  # small and uncached: generates
    dm.prepare_data()
    assert dm.arrays()["x"].shape == (160, 40)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
