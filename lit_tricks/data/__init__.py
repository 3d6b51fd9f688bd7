"""DataModules (embedded digits, MNIST-1D, MNIST, CIFAR10, ImageFolder), splits, train-only preprocessing,
resumable loading.

Importing this package imports neither scikit-learn, mnist1d nor torchvision's datasets: they load inside ``setup``.
"""

from lit_tricks.data.base import SplitDataModule
from lit_tricks.data.digits import DigitsDataModule
from lit_tricks.data.mnist1d import MNIST1DDataModule
from lit_tricks.data.preprocessing import PREPROCESSING, build_preprocessor, fit_preprocessor
from lit_tricks.data.sampling import ResumableSampler, SplitDataset
from lit_tricks.data.vision import CIFAR10DataModule, ImageFolderDataModule, MNISTDataModule

__all__ = [
    "PREPROCESSING",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "MNISTDataModule",
    "ResumableSampler",
    "SplitDataModule",
    "SplitDataset",
    "build_preprocessor",
    "fit_preprocessor",
]
