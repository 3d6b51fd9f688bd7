"""Common DataModule: stratified splits, k folds, subsample, bootstrap, train-only preprocessing, resumable loader."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_tricks.data.preprocessing import PREPROCESSING, FittedPreprocessor, fit_preprocessor
from lit_tricks.data.sampling import ImageSource, SplitDataset, train_loader
from lit_tricks.data.splits import bootstrap_indices, mix_seed, stratified_holdout, stratified_kfold
from lit_tricks.validation import ArgumentError, is_int, is_number, number_problem, raise_all

__all__ = ["SplitDataModule", "merged_signature"]

# Tags that give each random split its own stream of the split seed.
_TEST, _VAL, _FOLDS, _SUBSAMPLE, _BOOTSTRAP = range(5)


def _training_seed() -> int:
    """The seed of ``seed_everything`` (``PL_GLOBAL_SEED``), or 0 when none was set."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


class SplitDataModule(pl.LightningDataModule):
    """Base class: a pool of labelled images split into train/val/test; subclasses implement :meth:`load`.

    ``num_classes`` and ``dims`` (C, H, W) are set by the subclass in ``__init__``; ``preprocessor`` (an ``nn.Module``
    with buffers, fit on the training split only) and ``model_dims`` exist after ``setup()``. Loaders yield raw
    ``(x, y)`` with x float in [0, 1]; ``train_transform`` (augmentation) runs in the training dataset only.

    Args:
        split_seed: seeds every split (test, val, folds, train_size subsample); separate from the training seed.
        val_fraction: share of the pool held out for validation (0 = no validation loader); ignored when ``fold``
            is set.
        test_fraction: share of the pool held out for testing; datasets with an official test set ignore it.
        train_size: subsample the training split to this many samples (int) or this share (float in (0, 1]),
            stratified.
        fold: use fold ``fold`` of ``num_folds`` stratified folds of the non-test pool as validation, the rest as
            training (k-fold cross-validation); None = the ``val_fraction`` hold-out.
        bootstrap: resample the training split with replacement (bagging); seeded by ``bootstrap_seed``, which
            defaults to the training seed (``seed_everything``), so members trained with different seeds differ.
        preprocessing: one of :data:`lit_tricks.data.preprocessing.PREPROCESSING`: none | center (per-channel mean)
            | center_per_feature (``X -= X.mean(axis=0)``) | standardize (per-channel mean/std) |
            standardize_per_feature (``X /= X.std(axis=0)`` after centring) | minmax (per channel to [-1, 1]) |
            minmax_per_feature | pca (flat ``(N, k)`` output, see ``pca_components``) | pca_whiten (flat, unit
            variance) | zca. A constant channel or feature gets the scale 1 (scikit-learn's rule).
        pca_components: int k, or float fraction of variance to keep (pca, pca_whiten).
        zca_epsilon: added to the covariance eigenvalues before whitening (zca, pca_whiten).
        seed: seeds the shuffle order and the per-sample augmentation RNG; None = the training seed.
    """

    num_classes: int
    dims: tuple[int, int, int]

    def __init__(self, data_dir: str | None = None, batch_size: int = 64, num_workers: int = 0, split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.3, train_size: int | float | None = None,
                 fold: int | None = None, num_folds: int = 5, bootstrap: bool = False,
                 bootstrap_seed: int | None = None, preprocessing: str = "standardize",
                 pca_components: int | float = 0.99, zca_epsilon: float = 0.1,
                 train_transform: Callable[[Tensor], Tensor] | None = None, seed: int | None = None,
                 shuffle: bool = True, drop_last: bool = False, pin_memory: bool = False,
                 persistent_workers: bool = False) -> None:
        super().__init__()
        self._validate(batch_size=batch_size, num_workers=num_workers, split_seed=split_seed,
                       val_fraction=val_fraction, test_fraction=test_fraction, train_size=train_size, fold=fold,
                       num_folds=num_folds, bootstrap_seed=bootstrap_seed, preprocessing=preprocessing,
                       pca_components=pca_components, zca_epsilon=zca_epsilon, seed=seed)
        if train_transform is not None and not callable(train_transform):
            raise TypeError(f"train_transform: expected a callable on one image tensor or None, got "
                            f"{type(train_transform).__name__}")
        self.data_dir = None if data_dir is None else str(data_dir)
        self.batch_size, self.num_workers, self.split_seed = batch_size, num_workers, split_seed
        self.val_fraction, self.test_fraction, self.train_size = float(val_fraction), float(test_fraction), train_size
        self.fold, self.num_folds, self.bootstrap = fold, num_folds, bool(bootstrap)
        self.bootstrap_seed = bootstrap_seed
        self.preprocessing, self.pca_components, self.zca_epsilon = preprocessing, pca_components, zca_epsilon
        self.train_transform, self.seed, self.shuffle = train_transform, seed, shuffle
        self.drop_last, self.pin_memory, self.persistent_workers = drop_last, pin_memory, persistent_workers
        self.source: ImageSource | None = None
        self.test_source: ImageSource | None = None
        self.split_indices: dict[str, Tensor] = {}
        self.preprocessor: FittedPreprocessor | None = None

    # ----------------------------------------------------------------------------------------------- validation
    @staticmethod
    def _validate(**v: Any) -> None:
        """Every bad argument at once (:class:`lit_tricks.validation.ArgumentErrors`)."""
        errors: list[ArgumentError] = []

        def bad(name: str, problem: str | None, value: Any = None) -> None:
            if problem:
                errors.append(ArgumentError(name, v.get(name, value), problem))

        bad("batch_size", number_problem(v["batch_size"], 1, integer=True))
        bad("num_workers", number_problem(v["num_workers"], 0, integer=True))
        bad("split_seed", number_problem(v["split_seed"], 0, integer=True))
        for name in ("seed", "bootstrap_seed"):
            bad(name, None if v[name] is None else number_problem(v[name], 0, integer=True))
        for name in ("val_fraction", "test_fraction"):
            bad(name, number_problem(v[name], 0.0, 1.0))
        if not errors and v["fold"] is None and v["val_fraction"] + v["test_fraction"] >= 1.0:
            errors.append(ArgumentError("val_fraction + test_fraction", v["val_fraction"] + v["test_fraction"],
                                        "must be < 1 (something left to train on)"))
        size = v["train_size"]
        if size is not None and not ((is_int(size) and size >= 1) or (is_number(size) and 0.0 < size <= 1.0)):
            bad("train_size", "must be None, an integer >= 1 or a number in (0, 1]")
        bad("num_folds", number_problem(v["num_folds"], 2, integer=True))
        if v["fold"] is not None and is_int(v["num_folds"]):
            bad("fold", number_problem(v["fold"], 0, v["num_folds"], integer=True))
        if v["preprocessing"] not in PREPROCESSING:
            bad("preprocessing", f"must be one of {sorted(PREPROCESSING)}")
        k = v["pca_components"]
        if not ((is_int(k) and k >= 1) or (is_number(k) and 0.0 < k <= 1.0)):
            bad("pca_components", "must be an integer >= 1 or a fraction in (0, 1]")
        bad("zca_epsilon", number_problem(v["zca_epsilon"], 0.0, lo_open=True))
        raise_all(errors)

    # ---------------------------------------------------------------------------------------------- subclassing
    def load(self) -> tuple[ImageSource, ImageSource | None]:
        """The pool to split and the official test set (None: hold ``test_fraction`` of the pool out instead)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Load, split (once) and fit the preprocessor on the training split (once)."""
        if self.source is None:
            self.source, self.test_source = self.load()
            self.split_indices = self.make_splits(self.source.targets, has_test=self.test_source is not None)
        if self.preprocessor is None:
            train = SplitDataset(self.source, self.split_indices["train"])
            try:
                self.preprocessor = fit_preprocessor(self.preprocessing, train.images(),
                                                     pca_components=self.pca_components, zca_epsilon=self.zca_epsilon)
            except ValueError as err:
                raise ValueError(f"preprocessing={self.preprocessing!r} (pca_components={self.pca_components!r}, "
                                 f"zca_epsilon={self.zca_epsilon!r}): {err}") from None

    def make_splits(self, targets: Tensor, has_test: bool) -> dict[str, Tensor]:
        """Indices into the pool for train / val / test (test is empty when the dataset has its own test set)."""
        pool = torch.arange(targets.numel())
        seed = self.split_seed
        if has_test:
            test = pool[:0]
        else:
            pool, test = stratified_holdout(pool, targets, self.test_fraction, mix_seed(seed, _TEST))
        if self.fold is not None:
            folds = stratified_kfold(pool, targets, self.num_folds, mix_seed(seed, _FOLDS))
            val = folds[self.fold]
            train = torch.cat([f for i, f in enumerate(folds) if i != self.fold]).sort().values
        else:
            # val_fraction is a share of the whole pool (test included when it is held out from the pool).
            share = self.val_fraction * (targets.numel() / pool.numel())
            if share >= 1.0:
                raise ValueError(f"val_fraction={self.val_fraction}: leaves no training samples")
            train, val = stratified_holdout(pool, targets, share, mix_seed(seed, _VAL))
        if self.train_size is not None:
            n = train.numel()
            keep = self.train_size if is_int(self.train_size) else round(float(self.train_size) * n)
            if keep > n:
                raise ValueError(f"train_size={self.train_size}: the training split has only {n} samples")
            if keep < n:
                _, train = stratified_holdout(train, targets, keep / n, mix_seed(seed, _SUBSAMPLE))
        if self.bootstrap:
            bseed = self.bootstrap_seed if self.bootstrap_seed is not None else _training_seed()
            train = bootstrap_indices(train, mix_seed(bseed, _BOOTSTRAP))
        if train.numel() == 0:
            raise ValueError("the training split is empty: lower val_fraction/test_fraction or raise train_size")
        return {"train": train, "val": val, "test": test}

    def split_fingerprint(self) -> int:
        """A 63-bit hash of the train/val/test indices (0 before setup); stored in checkpoints to catch a resume
        on a different split."""
        if not self.split_indices:
            return 0
        return mix_seed(*(mix_seed(len(v), *v.tolist()) for v in self.split_indices.values()))

    def state_dict(self) -> dict[str, Any]:
        """Plain values for the checkpoint: a version and the split fingerprint."""
        return {"version": 1, "split_fingerprint": self.split_fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when the checkpoint was written with another split (resume would not continue the same run)."""
        saved, current = int(state_dict.get("split_fingerprint", 0)), self.split_fingerprint()
        if saved and current and saved != current:
            warnings.warn(f"{type(self).__name__}: the checkpoint was trained on another data split (fingerprint "
                          f"{saved} != {current}); check split_seed, fractions, train_size, fold and bootstrap",
                          stacklevel=2)

    @property
    def model_dims(self) -> tuple[int, int, int]:
        """Shape of one sample as the model sees it (after the preprocessor; ``(k, 1, 1)`` for PCA)."""
        return self.preprocessor.output_dims(self.dims) if self.preprocessor is not None else self.dims

    def _require_setup(self) -> ImageSource:
        if self.source is None:
            self.setup()
        assert self.source is not None
        return self.source

    def dataset(self, split: str) -> SplitDataset:
        """The un-augmented dataset of ``split`` (train | val | test); augmentation only in the train loader."""
        source = self._require_setup()
        if split == "test" and self.test_source is not None:
            return SplitDataset(self.test_source, torch.arange(len(self.test_source)))
        if split not in self.split_indices:
            raise ValueError(f"split: expected one of {sorted(self.split_indices)}, got {split!r}")
        return SplitDataset(source, self.split_indices[split])

    # --------------------------------------------------------------------------------------------------- loaders
    def data_seed(self) -> int:
        """Seed of the shuffle order and of the per-sample augmentation RNG."""
        return self.seed if self.seed is not None else _training_seed()

    def train_dataloader(self) -> DataLoader[Any]:
        source = self._require_setup()
        seed = self.data_seed()
        dataset = SplitDataset(source, self.split_indices["train"], self.train_transform, seed=seed)
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return train_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, seed=seed,
                            shuffle=self.shuffle, num_replicas=replicas, rank=rank, drop_last=self.drop_last,
                            pin_memory=self.pin_memory, persistent_workers=self.persistent_workers)

    def _eval_loader(self, split: str) -> DataLoader[Any]:
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def val_dataloader(self) -> Any:
        self._require_setup()
        return self._eval_loader("val") if self.split_indices["val"].numel() > 0 else []

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")

    def predict_dataloader(self) -> Any:
        return self._eval_loader("test")


def merged_signature(cls: type | None = None, *, without: tuple[str, ...] = ()) -> Any:
    """Class decorator: give ``cls.__init__`` the full signature (its own keywords plus the base class's instead of
    ``**kwargs``), so ``inspect.signature``, config checks and the generated base configs see every accepted key;
    ``without`` names base keywords the class refuses (``@merged_signature(without=("val_fraction",))``)."""
    if cls is None:
        return lambda c: merged_signature(c, without=without)
    own = inspect.signature(cls.__init__)  # type: ignore[misc]
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in params} | set(without)
    base = inspect.signature(SplitDataModule.__init__).parameters.values()
    extra = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in base if p.name not in names and p.name != "self"]
    cls.__init__.__signature__ = own.replace(parameters=params + extra)  # type: ignore[misc]
    return cls
