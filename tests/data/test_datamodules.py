"""DataModules: the digits split, train-only statistics, folds, subsample, bootstrap, argument validation, and the
on-disk formats (MNIST idx, CIFAR-10 pickle batches, ImageFolder PNGs) written here in miniature and loaded."""

from __future__ import annotations

import ast
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lit_tricks.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from lit_tricks.data.preprocessing import CenterChannels, CenterFeatures, PCAProject, Standardize
from lit_tricks.validation import ArgumentError, ArgumentErrors


def digits(**kwargs: Any) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_default_split_is_stratified_30_percent_test_and_seeded() -> None:
    dm = digits()
    assert dm.num_classes == 10 and dm.dims == (1, 8, 8)
    split = dm.split_indices
    sizes = {k: v.numel() for k, v in split.items()}
    assert sizes == {"train": 1078, "val": 180, "test": 539}  # 1797 = 60% / 10% / 30%
    assert len(set(torch.cat(list(split.values())).tolist())) == 1797  # disjoint and complete
    targets = dm.source.targets  # type: ignore[union-attr]
    whole = torch.bincount(targets, minlength=10).double() / 1797
    for part in split.values():
        share = torch.bincount(targets[part], minlength=10).double() / part.numel()
        assert (share - whole).abs().max() < 0.01  # stratified
    assert torch.equal(digits(seed=5).split_indices["test"], split["test"])  # training seed leaves the split
    assert not torch.equal(digits(split_seed=1).split_indices["test"], split["test"])
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (64, 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0 and y.dtype == torch.long


def test_standardize_statistics_come_from_the_training_split_only() -> None:
    dm = digits()
    assert isinstance(dm.preprocessor, Standardize)
    pixels = dm.source.images.numpy()  # type: ignore[union-attr]
    train = pixels[dm.split_indices["train"].numpy()]
    np.testing.assert_allclose(dm.preprocessor.mean.numpy(), [train.mean()], rtol=1e-5)
    np.testing.assert_allclose(dm.preprocessor.std.numpy(), [train.std()], rtol=1e-5)
    assert abs(float(dm.preprocessor.mean) - float(pixels.mean())) > 1e-4  # all-data stats differ
    assert abs(float(dm.preprocessor.std) - float(pixels.std())) > 1e-4


def test_centering_statistics_come_from_the_training_split_only() -> None:
    """center_per_feature subtracts the notes' X.mean(axis=0) of the training split; center one mean per channel."""
    dm = digits(preprocessing="center_per_feature")
    pixels = dm.source.images.double().numpy()  # type: ignore[union-attr]
    train = pixels[dm.split_indices["train"].numpy()]
    assert isinstance(dm.preprocessor, CenterFeatures)
    np.testing.assert_allclose(dm.preprocessor.mean.numpy(), train.mean(axis=0), atol=1e-6)
    assert np.abs(dm.preprocessor.mean.numpy() - pixels.mean(axis=0)).max() > 1e-4  # all-data means differ
    x = torch.as_tensor(pixels[:5], dtype=torch.float32)
    np.testing.assert_allclose(dm.preprocessor(x).numpy(), pixels[:5] - train.mean(axis=0), atol=1e-6)
    channel = digits(preprocessing="center").preprocessor
    assert isinstance(channel, CenterChannels)
    np.testing.assert_allclose(channel.mean.numpy(), [train.mean()], rtol=1e-6)


def test_pca_preprocessing_reports_flat_model_dims() -> None:
    dm = digits(preprocessing="pca", pca_components=12)
    assert isinstance(dm.preprocessor, PCAProject)
    assert dm.model_dims == (12, 1, 1) and dm.dims == (1, 8, 8)
    with pytest.raises(ValueError, match=r"pca_components=100.*expected an int in \[1, 64\]"):
        digits(preprocessing="pca", pca_components=100)


def test_folds_partition_the_non_test_pool() -> None:
    folds = [digits(fold=i, num_folds=3).split_indices for i in range(3)]
    vals = [f["val"] for f in folds]
    pool = torch.cat(vals).sort().values
    assert torch.equal(pool, torch.cat([folds[0]["train"], folds[0]["val"]]).sort().values)
    assert pool.numel() == 1797 - 539 and len(set(pool.tolist())) == pool.numel()
    assert max(v.numel() for v in vals) - min(v.numel() for v in vals) <= 1
    assert all(torch.equal(f["test"], folds[0]["test"]) for f in folds)


def test_train_size_and_bootstrap() -> None:
    base = digits().split_indices["train"]
    small = digits(train_size=100).split_indices["train"]
    assert small.numel() == 100 and set(small.tolist()) <= set(base.tolist())
    assert digits(train_size=0.5).split_indices["train"].numel() == 539
    bag = digits(bootstrap=True, bootstrap_seed=1).split_indices["train"]
    assert bag.numel() == base.numel() and set(bag.tolist()) <= set(base.tolist())
    assert len(set(bag.tolist())) < base.numel()  # drawn with replacement
    assert torch.equal(bag, digits(bootstrap=True, bootstrap_seed=1).split_indices["train"])
    assert not torch.equal(bag, digits(bootstrap=True, bootstrap_seed=2).split_indices["train"])
    with pytest.raises(ValueError, match="train_size=5000"):
        digits(train_size=5000)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, r"batch_size must be an integer in \[1, inf\), got 0"),
    ({"val_fraction": 1.5}, r"val_fraction must be a number in \[0, 1\), got 1.5"),
    ({"test_fraction": -0.1}, r"test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
    ({"fold": 5, "num_folds": 5}, r"fold must be an integer in \[0, 5\), got 5"),
    ({"num_folds": 1}, r"num_folds"),
    ({"train_size": 0}, r"train_size"),
    ({"preprocessing": "whiten"}, r"preprocessing must be one of \['center', 'center_per_feature', 'minmax', "
                                  r"'minmax_per_feature', 'none', 'pca', 'pca_whiten', 'standardize', "
                                  r"'standardize_per_feature', 'zca'\]"),
    ({"pca_components": 1.5}, r"pca_components"),
])
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        DigitsDataModule(**kwargs)


def test_every_bad_argument_at_once() -> None:
    with pytest.raises(ArgumentErrors) as info:
        DigitsDataModule(batch_size=0, num_workers=-1)
    assert [(e.arg, e.value) for e in info.value.errors] == [("batch_size", 0), ("num_workers", -1)]


def test_sklearn_is_imported_lazily() -> None:
    """No module of lit_tricks.data imports scikit-learn or matplotlib at module level (only inside functions)."""
    package = Path(__file__).resolve().parents[2] / "lit_tricks" / "data"
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("sklearn", "matplotlib") for n in names), (path.name, names)


# ----------------------------------------------------------------------------------------- on-disk formats
def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_the_four_raw_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {"train": np.arange(40) % 10, "t10k": np.arange(10) % 10}
    pixels = {k: rng.integers(0, 256, (len(v), 28, 28)) for k, v in labels.items()}
    for k in labels:
        write_idx(raw / f"{k}-images-idx3-ubyte", pixels[k])
        write_idx(raw / f"{k}-labels-idx1-ubyte", labels[k])
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.25, batch_size=8)
    assert dm.num_classes == 10 and dm.dims == (1, 28, 28)
    dm.prepare_data()
    dm.setup("fit")
    assert {k: v.numel() for k, v in dm.split_indices.items()} == {"train": 30, "val": 10, "test": 0}
    x, y = next(iter(dm.test_dataloader()))  # the official test file
    assert torch.allclose(x[:, 0], torch.from_numpy(pixels["t10k"][:8]).float() / 255)
    assert y.tolist() == labels["t10k"][:8].tolist()


def test_cifar10_reads_the_pickle_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.2, batch_size=10, preprocessing="minmax")
    assert dm.dims == (3, 32, 32)
    dm.setup("fit")
    assert dm.split_indices["train"].numel() == 40
    x, y = next(iter(dm.test_dataloader()))
    expected = torch.from_numpy(batches["test_batch"]["data"]).reshape(10, 3, 32, 32).float() / 255
    assert torch.allclose(x, expected) and y.tolist() == list(range(10))
    assert dm.preprocessor is not None and float(dm.preprocessor(x).min()) >= -1.0 - 1e-6


def test_image_folder_scans_classes_in_init_and_resizes(tmp_path: Path) -> None:
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "emu"]):
        (tmp_path / name).mkdir()
        for i in range(4):
            size = (6, 6) if i else (9, 7)  # one odd size, resized to the first image's
            Image.new("RGB", size, color=(40 * c, 10 * i, 200)).save(tmp_path / name / f"{i}.png")
    dm = ImageFolderDataModule(data_dir=str(tmp_path), val_fraction=0.0, test_fraction=0.25, batch_size=4)
    assert dm.num_classes == 3 and dm.dims == (3, 7, 9)  # first file is cat/0.png: 9 wide, 7 high
    dm.setup("fit")
    assert dm.split_indices["test"].numel() == 3
    assert sorted(dm.source.targets[dm.split_indices["test"]].tolist()) == [0, 1, 2]  # type: ignore[union-attr]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 7, 9) and float(x[:, 2].mean()) == pytest.approx(200 / 255, abs=1e-3)
    grey = ImageFolderDataModule(data_dir=str(tmp_path), channels=1, image_size=5)
    assert grey.dims == (1, 5, 5)


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule, ImageFolderDataModule])
def test_missing_root_is_one_line_naming_path_and_layout(tmp_path: Path, cls: type) -> None:
    with pytest.raises(FileNotFoundError) as info:
        dm = cls(data_dir=str(tmp_path / "nope"))
        dm.prepare_data()
    text = str(info.value)
    assert "\n" not in text and "nope" in text and "expected" in text


def test_state_dict_warns_when_resumed_on_another_split() -> None:
    dm, other = digits(), digits(split_seed=1)
    state = dm.state_dict()
    assert state["version"] == 1 and isinstance(state["split_fingerprint"], int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        digits().load_state_dict(state)  # same split: silent
    assert not [w for w in caught if "split" in str(w.message)]
    with pytest.warns(UserWarning, match="another data split"):
        other.load_state_dict(state)


def test_resumable_sampler_shards_ranks_and_restores_its_position() -> None:
    from lit_tricks.data.sampling import ResumableSampler

    data = list(range(10))
    ranks = [ResumableSampler(data, seed=1, num_replicas=2, rank=r) for r in (0, 1)]  # type: ignore[arg-type]
    for s in ranks:
        s.set_epoch(3)
    pairs = [list(s) for s in ranks]
    assert all(e == 3 for p in pairs for e, _ in p)
    assert sorted(i for p in pairs for _, i in p) == data and len(pairs[0]) == len(pairs[1]) == 5
    it = iter(ranks[0])
    head = [next(it), next(it)]
    restored = iter(ResumableSampler(data, seed=1, num_replicas=2, rank=0))  # type: ignore[arg-type]
    restored.load_state_dict(it.state_dict())  # type: ignore[attr-defined]
    assert head + list(restored) == pairs[0]
    assert list(ResumableSampler(data, seed=1)) != list(ResumableSampler(data, seed=2))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["pca", "pca_whiten", "center", "center_per_feature"])
def test_predict_on_raw_inputs_is_unchanged_after_checkpoint_reload(tmp_path: Path, kind: str) -> None:
    """The preprocessor's statistics travel in the checkpoint: a module rebuilt from it (PCA buffers of a shape
    unknown at construction) predicts the same on raw inputs."""
    from lit_tricks.models import MLP
    from lit_tricks.modules.trick_module import TrickModule
    from tests.helpers.tiny import tiny_trainer

    dm = digits(preprocessing=kind, pca_components=0.9, zca_epsilon=0.01)
    k = int(np.prod(dm.model_dims))
    module = TrickModule(MLP(num_classes=10, in_features=k), preprocess=dm.preprocessor)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    reloaded = TrickModule.load_from_checkpoint(tmp_path / "m.ckpt", model=MLP(num_classes=10, in_features=k))
    x, _ = next(iter(dm.predict_dataloader()))
    module.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), module(x))
    assert type(reloaded.preprocess) is type(dm.preprocessor)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.preprocess.buffers(), dm.preprocessor.buffers(), strict=True))
