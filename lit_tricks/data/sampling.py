"""Image sources, a split dataset with per-sample augmentation seeds, and a resumable epoch sampler.

Exact mid-epoch resume needs two things. The data *position*: the train loader is a
``torchdata.stateful_dataloader.StatefulDataLoader`` (Lightning saves its ``state_dict`` in the checkpoint) whose
sampler iterator records (epoch, samples yielded) and replays the epoch's permutation, drawn from
``torch.Generator().manual_seed(seed + epoch)`` as ``DistributedSampler`` does. The *randomness*: each sample is
augmented under its own RNG seeded by ``mix_seed(seed, epoch, index)``, not the global RNG, so the augmentation of a
sample is the same whether it is drawn before or after a restart and whatever the number of workers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lit_tricks.data.splits import mix_seed

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # pragma: no cover - torchdata is optional (extra `resume`); a plain DataLoader replays the epoch
    StatefulDataLoader = None

__all__ = [
    "FileImages",
    "ImageSource",
    "ResumableSampler",
    "SplitDataset",
    "TensorImages",
    "train_loader",
]


class ImageSource:
    """A random-access collection of raw images ``(C, H, W)`` float in [0, 1] with integer ``targets``."""

    targets: Tensor

    def __len__(self) -> int:
        return int(self.targets.numel())

    def image(self, index: int) -> Tensor:
        raise NotImplementedError

    def batch(self, indices: Tensor) -> Tensor:
        """Images at ``indices`` stacked as ``(n, C, H, W)`` float."""
        return torch.stack([self.image(int(i)) for i in indices])


class TensorImages(ImageSource):
    """Images held in memory as ``(N, C, H, W)``: uint8 (scaled by 1/255) or float already in [0, 1]."""

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        if images.dim() != 4 or images.shape[0] != targets.numel():
            raise ValueError(f"images: expected (N, C, H, W) with N={targets.numel()}, got {tuple(images.shape)}")
        self.images, self.targets = images, targets.long()

    def _to_float(self, x: Tensor) -> Tensor:
        # a copy either way: an in-place transform must never write into the stored dataset
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)

    def image(self, index: int) -> Tensor:
        return self._to_float(self.images[index])

    def batch(self, indices: Tensor) -> Tensor:
        x = self.images[indices]  # a 1-d index tensor copies (a 0-d one or a slice gives a view): no second copy
        view = not isinstance(indices, Tensor) or indices.dim() == 0
        return self.as_float(x, copy=view)

    @staticmethod
    def as_float(x: Tensor, copy: bool) -> Tensor:
        """Stored images ``x`` as float in [0, 1]; ``copy=False`` where ``x`` is already a private copy."""
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=copy)


class FileImages(ImageSource):
    """Images read from files with PIL, converted to ``mode`` ("RGB" or "L") and resized to ``size`` (H, W)."""

    def __init__(self, paths: Sequence[str | Path], targets: Tensor, size: tuple[int, int], mode: str) -> None:
        self.paths, self.targets, self.size, self.mode = [str(p) for p in paths], targets.long(), size, mode

    def image(self, index: int) -> Tensor:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(self.paths[index]) as file:
            img = file.convert(self.mode)
        if (img.height, img.width) != self.size:
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return pil_to_tensor(img).float().div_(255.0)


class SplitDataset(Dataset[tuple[Tensor, int]]):
    """The samples ``indices`` of ``source``, with ``transform`` (augmentation) applied under a per-sample seed.

    A key is an index or an ``(epoch, index)`` pair (what :class:`ResumableSampler` yields); the transform runs with
    torch's and python's RNG seeded by ``mix_seed(seed, epoch, index)`` and both restored afterwards, so it neither
    reads nor disturbs the global RNG (dropout masks stay where resume puts them).
    """

    def __init__(self, source: ImageSource, indices: Tensor, transform: Callable[[Tensor], Tensor] | None = None,
                 seed: int = 0) -> None:
        self.source, self.indices, self.transform, self.seed = source, indices.long(), transform, int(seed)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        position = int(self.indices[index])
        x = self.source.image(position)
        if self.transform is not None:
            # CPU generator only, by hand: torch.manual_seed / fork_rng also seed the lazy CUDA/XPU/MTIA generators,
            # which formats a stack trace per call (~5 ms per sample).
            cpu = torch.default_generator
            torch_state, py_state = cpu.get_state(), random.getstate()
            sample_seed = mix_seed(self.seed, epoch, index)
            cpu.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                x = self.transform(x)
            finally:
                cpu.set_state(torch_state)
                random.setstate(py_state)
        return x, int(self.source.targets[position])

    def images(self, chunk: int = 1024) -> Iterator[Tensor]:
        """The un-augmented images in chunks ``(n, C, H, W)`` (to fit preprocessing statistics)."""
        for part in self.indices.split(chunk):
            yield self.source.batch(part)


class _EpochIterator(Iterator[tuple[int, int]]):
    """One epoch of :class:`ResumableSampler`: ``state_dict`` is (epoch, yielded), enough to replay the rest.

    The epoch is read from the sampler at the first ``next`` (not at creation: Lightning creates the iterator before
    it calls ``set_epoch``), unless ``load_state_dict`` fixed it first.
    """

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler
        self.epoch: int | None = None
        self.order: list[int] = []
        self.yielded = 0

    def __iter__(self) -> _EpochIterator:
        return self

    def _start(self, epoch: int) -> None:
        self.epoch, self.order = epoch, self.sampler.order(epoch)

    def __next__(self) -> tuple[int, int]:
        if self.epoch is None:
            self._start(self.sampler.epoch)
        if self.yielded >= len(self.order):
            raise StopIteration
        index = self.order[self.yielded]
        self.yielded += 1
        return int(self.epoch), index  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, int]:
        epoch = self.sampler.epoch if self.epoch is None else self.epoch
        return {"epoch": epoch, "yielded": self.yielded, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, yielded = int(state.get("epoch", self.sampler.epoch)), int(state.get("yielded", 0))
        self._start(epoch)
        if yielded >= len(self.order) > 0:
            # Saved after the epoch's last batch (on_train_batch_end / on_validation_end of the last batch):
            # Lightning resumes by fetching the next epoch's batches from this iterator, so start that epoch.
            self._start(epoch + 1)
            yielded = 0
        self.yielded = yielded


class ResumableSampler(DistributedSampler):
    """Shuffled epochs from ``seed + epoch`` that yield ``(epoch, index)`` pairs and resume mid-epoch.

    Subclasses ``DistributedSampler`` (pass ``num_replicas``/``rank`` under DDP; Lightning then keeps it instead of
    wrapping it). Its iterator is stateful, so ``StatefulDataLoader`` restores (epoch, position) from a checkpoint
    without relying on ``set_epoch`` being called before the first ``iter``.
    """

    def __init__(self, dataset: Dataset[Any], *, seed: int = 0, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)

    def order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch`` (DistributedSampler's rule: pad or drop to equal shares)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            indices = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last and self.total_size > n:
            padding = self.total_size - n
            indices += (indices * math.ceil(padding / max(n, 1)))[:padding]
        else:
            indices = indices[: self.total_size]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return _EpochIterator(self)


def train_loader(dataset: SplitDataset, *, batch_size: int, num_workers: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False, pin_memory: bool = False,
                 persistent_workers: bool = False) -> DataLoader[Any]:
    """A resumable training loader (``StatefulDataLoader``, or a plain ``DataLoader`` without torchdata)."""
    sampler = ResumableSampler(dataset, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank,
                               drop_last=drop_last)
    cls: Any = StatefulDataLoader if StatefulDataLoader is not None else DataLoader
    return cls(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
               pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0)
