"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning", 2020) generated offline by the ``mnist1d`` package."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_tricks.data.base import SplitDataModule, merged_signature
from lit_tricks.data.sampling import ImageSource, TensorImages
from lit_tricks.fault.atomic import atomic_torch_save

__all__ = ["MNIST1D_DEFAULTS", "MNIST1DDataModule", "generate_mnist1d"]

#: ``mnist1d.data.get_dataset_args()`` of mnist1d 0.0.2 without its download url: the paper's dataset.
MNIST1D_DEFAULTS: dict[str, Any] = {
    "num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60], "scale_coeff": 0.4,
    "max_translation": 48, "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2, "shear_scale": 0.75,
    "shuffle_seq": False, "final_seq_length": 40, "seed": 42,
}

# Datasets generated or read in this process, by cache key (tests and sweeps build many DataModules).
_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


def generate_mnist1d(args: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``mnist1d.data.make_dataset`` with ``args`` as float32/int64 tensors ``x (N, L)``, ``y``, ``x_test``, ``y_test``.

    ``make_dataset`` reseeds Python's and numpy's global RNGs (``set_seed(args.seed)``); their states are saved
    before and restored after, so generating the data never changes a training run's randomness.
    """
    try:
        from mnist1d.data import make_dataset
        from mnist1d.utils import ObjectView
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("MNIST1DDataModule needs mnist1d (the data extra): pip install mnist1d==0.0.2.post1") from err
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView({**args, "padding": list(args["padding"])}))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": torch.as_tensor(np.asarray(data["x"]), dtype=torch.float32),
            "y": torch.as_tensor(np.asarray(data["y"]), dtype=torch.long),
            "x_test": torch.as_tensor(np.asarray(data["x_test"]), dtype=torch.float32),
            "y_test": torch.as_tensor(np.asarray(data["y_test"]), dtype=torch.long)}


@merged_signature(without=("val_fraction", "test_fraction"))
class MNIST1DDataModule(SplitDataModule):
    """MNIST-1D: 10 classes of 40-sample 1-D signals, 4000 train / 1000 test with the package's defaults.

    Samples are ``(1, 1, L)`` tensors (one channel, a 1 x L "image"), already centred and scaled by the package.
    The test split is exactly the package's test split (its last ``1 - train_split`` share); training uses all
    the package's training samples unless ``val_size`` of them are held out (stratified, by ``split_seed``) for
    validation. The dataset is generated once per set of generation arguments and cached as
    ``<data_dir>/mnist1d/mnist1d-<hash of the arguments>.pt`` (atomic write); ``data_dir=None`` generates in memory.

    Args:
        val_size: training samples held out for validation (0 = none, the paper's protocol: train on all 4000
            and report the final weights).
        num_samples .. final_seq_length, generation_seed: ``mnist1d.data.get_dataset_args()`` (same names and
            defaults; the package's ``seed`` is ``generation_seed`` here, as ``seed`` seeds shuffling);
            ``shuffle_seq=True`` is the paper's spatially shuffled variant.
        preprocessing: default none (the package already standardized the whole dataset).
    See :class:`lit_tricks.data.base.SplitDataModule` for the other arguments.
    """

    def __init__(self, data_dir: str | None = None, batch_size: int = 100, num_workers: int = 0,
                 split_seed: int = 0, val_size: int = 0, preprocessing: str = "none",
                 num_samples: int = 5000, train_split: float = 0.8, template_len: int = 12,
                 padding: tuple[int, int] | list[int] = (36, 60), scale_coeff: float = 0.4,
                 max_translation: int = 48, corr_noise_scale: float = 0.25, iid_noise_scale: float = 2e-2,
                 shear_scale: float = 0.75, shuffle_seq: bool = False, final_seq_length: int = 40,
                 generation_seed: int = 42,
                 **kwargs: Any) -> None:
        for name in ("val_fraction", "test_fraction"):
            if name in kwargs:
                raise ValueError(f"{name}: MNIST1DDataModule has a fixed test split and takes val_size instead")
        n_train = int(num_samples // 10 * 10 * train_split)
        if not isinstance(val_size, int) or isinstance(val_size, bool) or not 0 <= val_size < n_train:
            raise ValueError(f"val_size: expected an int in [0, {n_train}) (training samples held out), "
                             f"got {val_size!r}")
        if not isinstance(num_samples, int) or num_samples < 20:
            raise ValueError(f"num_samples: expected an int >= 20, got {num_samples!r}")
        if not 0.0 < float(train_split) < 1.0:
            raise ValueError(f"train_split: expected a float in (0, 1), got {train_split!r}")
        if len(list(padding)) != 2:
            raise ValueError(f"padding: expected [low, high], got {padding!r}")
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, split_seed=split_seed,
                         val_fraction=val_size / n_train, test_fraction=0.0, preprocessing=preprocessing,
                         **kwargs)
        self.val_size = val_size
        self.generation_args: dict[str, Any] = {
            "num_samples": int(num_samples), "train_split": float(train_split), "template_len": int(template_len),
            "padding": [int(p) for p in padding], "scale_coeff": float(scale_coeff),
            "max_translation": int(max_translation), "corr_noise_scale": float(corr_noise_scale),
            "iid_noise_scale": float(iid_noise_scale), "shear_scale": float(shear_scale),
            "shuffle_seq": bool(shuffle_seq), "final_seq_length": int(final_seq_length), "seed": int(generation_seed),
        }
        self.num_classes = 10
        self.dims = (1, 1, int(final_seq_length))
        self._arrays: dict[str, torch.Tensor] | None = None

    def cache_key(self) -> str:
        """A hash of the generation arguments (names the cache file)."""
        return hashlib.sha256(json.dumps(self.generation_args, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(self) -> Path | None:
        """Where the generated dataset is cached (None when ``data_dir`` is None)."""
        if self.data_dir is None:
            return None
        return Path(self.data_dir) / "mnist1d" / f"mnist1d-{self.cache_key()}.pt"

    def arrays(self) -> dict[str, torch.Tensor]:
        """The dataset as tensors: from this process's memory, else the cache file, else generated (and cached).

        The tensors are shared read-only: every access through the datasets copies the samples it returns."""
        if self._arrays is not None:
            return self._arrays
        path = self.cache_path()
        data = _MEMORY.get(self.cache_key())
        if data is None and path is not None and path.is_file():
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict) and loaded.get("args") == self.generation_args:
                data = {k: loaded[k] for k in ("x", "y", "x_test", "y_test")}
        if data is None:
            data = generate_mnist1d(self.generation_args)
        if path is not None and not path.is_file():
            atomic_torch_save({**data, "args": self.generation_args}, path)
        self._arrays = _MEMORY[self.cache_key()] = data
        return data

    def prepare_data(self) -> None:
        self.arrays()

    def load(self) -> tuple[ImageSource, ImageSource | None]:
        data = self.arrays()
        return (TensorImages(data["x"][:, None, None, :], data["y"]),
                TensorImages(data["x_test"][:, None, None, :], data["y_test"]))
