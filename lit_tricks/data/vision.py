"""torchvision-format datasets read from disk with ``download=False``: MNIST, CIFAR10, ImageFolder."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_tricks.data.base import SplitDataModule, merged_signature
from lit_tricks.data.sampling import FileImages, ImageSource, TensorImages

__all__ = ["CIFAR10DataModule", "ImageFolderDataModule", "MNISTDataModule"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _require_dir(data_dir: str | None, name: str, layout: str) -> Path:
    """``data_dir`` as a Path; a missing directory or file is one line naming the path and the expected layout."""
    if data_dir is None:
        raise FileNotFoundError(f"{name}: data_dir is None; expected {layout} (download=False)")
    return Path(data_dir).expanduser()


def _missing(name: str, path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{name}: {path} not found; expected {layout} (download=False: fetch the files first)")


@merged_signature
class MNISTDataModule(SplitDataModule):
    """MNIST (28x28 grey, 10 classes) from torchvision's raw layout ``<data_dir>/MNIST/raw/`` (4 idx files, unzipped).

    The official 10k test set is the test split (``test_fraction`` is ignored); ``val_fraction`` of the 60k training
    images is held out for validation. Reading uses ``torchvision.datasets.MNIST(download=False)``.
    """

    def __init__(self, data_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.num_classes = 10
        self.dims = (1, 28, 28)

    @property
    def layout(self) -> str:
        return f"<data_dir>/MNIST/raw/ holding {', '.join(MNIST_FILES)}"

    def _raw_dir(self) -> Path:
        raw = _require_dir(self.data_dir, "MNIST", self.layout) / "MNIST" / "raw"
        for name in MNIST_FILES:
            if not (raw / name).is_file():
                raise _missing("MNIST", raw / name, self.layout)
        return raw

    def prepare_data(self) -> None:
        self._raw_dir()

    def load(self) -> tuple[ImageSource, ImageSource | None]:
        from torchvision.datasets import MNIST

        root = str(self._raw_dir().parent.parent)
        parts = [MNIST(root, train=train, download=False) for train in (True, False)]
        train, test = (TensorImages(p.data.unsqueeze(1), p.targets) for p in parts)
        return train, test


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR python-format batch: a pickled dict with ``data`` (N x 3072 uint8, RGB planes) and ``labels``."""
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data.copy()), torch.as_tensor(labels, dtype=torch.long)


@merged_signature
class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 (32x32 RGB, 10 classes) from the python pickle batches in ``<data_dir>/cifar-10-batches-py/``.

    Our own reader of the format (torchvision's class insists on the md5 sums of the official files); the official
    test batch is the test split, ``val_fraction`` of the 50k training images is held out for validation.
    """

    def __init__(self, data_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.num_classes = 10
        self.dims = (3, 32, 32)

    @property
    def layout(self) -> str:
        return f"<data_dir>/cifar-10-batches-py/ holding {', '.join(CIFAR10_FILES)}"

    def _batch_dir(self) -> Path:
        folder = _require_dir(self.data_dir, "CIFAR10", self.layout) / "cifar-10-batches-py"
        for name in CIFAR10_FILES:
            if not (folder / name).is_file():
                raise _missing("CIFAR10", folder / name, self.layout)
        return folder

    def prepare_data(self) -> None:
        self._batch_dir()

    def load(self) -> tuple[ImageSource, ImageSource | None]:
        folder = self._batch_dir()
        batches = [read_cifar_batch(folder / name) for name in CIFAR10_FILES[:-1]]
        train = TensorImages(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        return train, TensorImages(*read_cifar_batch(folder / CIFAR10_FILES[-1]))


@merged_signature
class ImageFolderDataModule(SplitDataModule):
    """Images in ``<data_dir>/<class>/<image>`` (torchvision's ImageFolder layout), split like the digits.

    The class folders are scanned in ``__init__`` (so ``num_classes`` and ``dims`` are known before ``setup``).

    Args:
        image_size: (H, W) every image is resized to (bilinear, not an augmentation); None = the first image's size.
        channels: 3 (RGB) or 1 (grey).
    """

    LAYOUT = "<data_dir>/<class_name>/<image>.png|jpg|... (one folder per class)"

    def __init__(self, data_dir: str | None = None, image_size: int | tuple[int, int] | list[int] | None = None,
                 channels: int = 3, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), got {channels!r}")
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        root = _require_dir(self.data_dir, "ImageFolder", self.LAYOUT)
        if not root.is_dir():
            raise _missing("ImageFolder", root, self.LAYOUT)
        try:
            self.classes, class_to_idx = find_classes(str(root))
            samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"ImageFolder: {root}: {err}; expected {self.LAYOUT}") from None
        self.paths = [p for p, _ in samples]
        self.targets = torch.as_tensor([t for _, t in samples], dtype=torch.long)
        self.channels = channels
        self.size = self._image_size(image_size)
        self.num_classes = len(self.classes)
        self.dims = (channels, *self.size)

    def _image_size(self, image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
        if image_size is None:
            from PIL import Image

            with Image.open(self.paths[0]) as img:
                return (img.height, img.width)
        if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
            return (image_size, image_size)
        size = tuple(image_size) if isinstance(image_size, tuple | list) else ()
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"image_size: expected None, a positive int or (H, W), got {image_size!r}")
        return (int(size[0]), int(size[1]))

    def load(self) -> tuple[ImageSource, ImageSource | None]:
        return FileImages(self.paths, self.targets, self.size, "RGB" if self.channels == 3 else "L"), None
