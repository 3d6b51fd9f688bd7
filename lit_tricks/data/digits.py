"""scikit-learn's embedded digits (1797 8x8 grey images, 10 classes) as a DataModule; works offline."""

from __future__ import annotations

from typing import Any

import torch

from lit_tricks.data.base import SplitDataModule, merged_signature
from lit_tricks.data.sampling import ImageSource, TensorImages

__all__ = ["DigitsDataModule"]


@merged_signature
class DigitsDataModule(SplitDataModule):
    """``sklearn.datasets.load_digits`` as ``1x8x8`` images in [0, 1] (pixel values 0..16 divided by 16).

    Default split: 30% stratified test split, 10% validation, 60% training, all by ``split_seed``. scikit-learn
    (the ``data`` extra) is imported in :meth:`load`, never at import time. ``data_dir`` is accepted and unused.
    See :class:`lit_tricks.data.base.SplitDataModule` for the arguments.
    """

    def __init__(self, data_dir: str | None = None, batch_size: int = 64, num_workers: int = 0, split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, split_seed=split_seed,
                         val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)
        self.num_classes = 10
        self.dims = (1, 8, 8)

    def prepare_data(self) -> None:
        _load_digits()

    def load(self) -> tuple[ImageSource, ImageSource | None]:
        images, targets = _load_digits()
        return TensorImages(images, targets), None


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("DigitsDataModule needs scikit-learn (the data extra): pip install scikit-learn") from err
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)
