"""A training loader for in-memory datasets: one index tensor per batch instead of fetching and collating samples.

:class:`TensorLoader` yields exactly the batches of ``StatefulDataLoader(dataset, batch_size, sampler=
ResumableSampler(...))`` (the same sample ids in the same order, shuffled or not, per DDP rank, resumed mid-epoch),
but takes the images and targets of up to :data:`CHUNK_BYTES` of consecutive batches in one indexing op each and
yields copies of their slices. Its state is
``StatefulDataLoader``'s single-process state (same keys and values), so Lightning saves and restores it in the same
place and a checkpoint written by either loader resumes with the other. Creating an iterator draws one int64 from
torch's global RNG, as a ``DataLoader`` iterator does (its base seed), so the global RNG (dropout masks) moves
exactly as with the ``DataLoader``.

Augmentation: a transform with ``apply_batch(x, generator)`` (:class:`BatchTransform`, e.g.
:class:`lit_tricks.augment.SignalPipeline`) is applied once per batch with a generator seeded by
``mix_seed(seed, epoch, BATCH_STREAM, rank, first position)``: the stream of a batch depends only on where it sits in
its epoch, so a resumed run augments it as the uninterrupted run did. Any other transform runs per sample through
:class:`~lit_tricks.data.sampling.SplitDataset` (its per-sample seeds: the very values of the ``DataLoader`` path).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_tricks.data.sampling import ResumableSampler, SplitDataset, TensorImages
from lit_tricks.data.splits import mix_seed

__all__ = ["BATCH_STREAM", "CHUNK_BYTES", "BatchTransform", "TensorLoader", "batch_generator"]

#: Tag of the per-batch augmentation streams in ``mix_seed`` (per-sample streams use ``mix_seed(seed, epoch, i)``).
BATCH_STREAM = 0x6261746368

#: Raw image bytes gathered at once (at least one batch): two index ops per chunk instead of three per batch, a
#: bounded copy of the epoch's images (a whole MNIST-1D epoch, ten CIFAR batches of 128).
CHUNK_BYTES = 4 << 20

# StatefulDataLoader's single-process state keys (torchdata.stateful_dataloader.stateful_dataloader)
_SAMPLER_ITER = "_sampler_iter_state"
_FINISHED = "_iterator_finished"


@runtime_checkable
class BatchTransform(Protocol):
    """A training transform that augments a whole batch ``(N, ...)`` at once, drawing from ``generator`` only."""

    def apply_batch(self, x: Tensor, generator: torch.Generator) -> Tensor: ...


def batch_generator(seed: int, epoch: int, rank: int, start: int) -> torch.Generator:
    """The CPU generator of the batch that starts at position ``start`` of ``rank``'s order in ``epoch``."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, BATCH_STREAM, rank, start))


class _Iterator(Iterator[list[Tensor]]):
    """One epoch of a :class:`TensorLoader`; the epoch is read from the sampler at the first ``next`` (Lightning
    calls ``set_epoch`` after creating the iterator), as :class:`~lit_tricks.data.sampling.ResumableSampler` does."""

    def __init__(self, loader: TensorLoader, state: dict[str, Any] | None) -> None:
        self.loader = loader
        self.epoch: int | None = None
        self.order = torch.empty(0, dtype=torch.long)
        self.yielded = self.batches = 0
        self.finished = False
        self._chunk: tuple[int, int, Tensor, Tensor] | None = None  # positions [first, stop) gathered: images, targets
        if state:
            self._load(state)

    def _start(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = torch.as_tensor(self.loader.sampler.order(epoch), dtype=torch.long)
        self._chunk = None

    def _load(self, state: dict[str, Any]) -> None:
        inner = (state.get(_SAMPLER_ITER) or {}).get("sampler_iter_state") or {}
        epoch = int(inner.get("epoch", self.loader.sampler.epoch))
        yielded = int(inner.get("yielded", 0))
        self._start(epoch)
        if yielded >= len(self.order) > 0:  # saved after the epoch's last batch: go on with the next epoch
            self._start(epoch + 1)
            yielded = 0
        self.yielded, self.batches = yielded, int(state.get("_num_yielded", 0))
        self.finished = bool(state.get(_FINISHED, False))

    def __next__(self) -> list[Tensor]:
        if self.epoch is None:
            self._start(self.loader.sampler.epoch)
        loader, start = self.loader, self.yielded
        stop = min(start + loader.batch_size, len(self.order))
        if start >= stop or (loader.drop_last and stop - start < loader.batch_size):
            self.yielded, self.finished = stop, True  # a dropped partial batch was drawn from the sampler (torchdata)
            raise StopIteration
        self.yielded, self.batches = stop, self.batches + 1
        if not loader.batched:
            return loader.fetch(self.order[start:stop], int(self.epoch), start)  # type: ignore[arg-type]
        chunk = self._chunk
        if chunk is None or not chunk[0] <= start < stop <= chunk[1]:
            chunk = self._chunk = loader.gather(self.order, start)
        first, _, images, targets = chunk
        # copies of the slices: a batch owns its storage (a kept or saved batch does not hold the whole chunk)
        return loader.finish(images[start - first:stop - first], targets[start - first:stop - first].clone(),
                             int(self.epoch), start, copy=True)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        epoch = self.loader.sampler.epoch if self.epoch is None else self.epoch
        sampler_iter = {"samples_yielded": self.yielded,
                        "sampler_iter_state": {"epoch": epoch, "yielded": self.yielded,
                                               "seed": self.loader.sampler.seed}}
        return {"_index_sampler_state": None, _SAMPLER_ITER: sampler_iter, "_sampler_iter_yielded": self.batches,
                "_num_yielded": self.batches, "_IterableDataset_len_called": None, "_shared_seed": None,
                "fetcher_state": None, "dataset_state": None, _FINISHED: self.finished}


class TensorLoader:
    """Resumable training batches ``[x, y]`` of an in-memory :class:`~lit_tricks.data.sampling.SplitDataset`.

    Args:
        dataset: its source must be :class:`~lit_tricks.data.sampling.TensorImages`; its ``transform`` and ``seed``
            augment the batches (see the module docstring).
        sampler: the order (``ResumableSampler``: seeded shuffle or fixed order, DDP share of ``rank``); Lightning
            calls its ``set_epoch``.
        pin_memory: pin each batch when an accelerator is present (as a ``DataLoader`` does).
    """

    def __init__(self, dataset: SplitDataset, sampler: ResumableSampler, batch_size: int, drop_last: bool = False,
                 pin_memory: bool = False) -> None:
        if not isinstance(dataset.source, TensorImages):
            raise TypeError(f"TensorLoader: dataset.source must be TensorImages (in memory), got "
                            f"{type(dataset.source).__name__}")
        self.dataset, self.sampler, self.batch_size, self.drop_last = dataset, sampler, int(batch_size), drop_last
        self.pin_memory = pin_memory and torch.accelerator.is_available()
        self._positions = dataset.indices
        self._batched: tuple[Any, bool] = (object(), False)  # (the transform it was read of, batched)
        self._pending: dict[str, Any] | None = None
        self._iterator: _Iterator | None = None
        self._reuse = False  # state_dict() before iter(): the next iter() continues that iterator (as torchdata)

    @property
    def batched(self) -> bool:
        """Batches taken by index ops and augmented per batch (else per sample, through ``dataset[(epoch, i)]``):
        read again only when ``dataset.transform`` is replaced (a protocol ``isinstance`` costs microseconds)."""
        transform = self.dataset.transform
        if self._batched[0] is not transform:
            self._batched = (transform, transform is None or isinstance(transform, BatchTransform))
        return self._batched[1]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> _Iterator:
        if self._reuse and self._iterator is not None:
            self._reuse = False
            return self._iterator
        self._iterator = self._new_iterator()
        if self._iterator.finished:  # a state saved after StopIteration: a fresh epoch (as torchdata)
            self._iterator = self._new_iterator()
        return self._iterator

    def _new_iterator(self) -> _Iterator:
        torch.empty((), dtype=torch.int64).random_()  # a DataLoader iterator's base seed: the same global RNG draw
        state, self._pending = self._pending, None
        return _Iterator(self, state)

    def as_dataloader(self) -> DataLoader[Any]:
        """A plain ``DataLoader`` over the same dataset and batch size (per-sample path), for readers that need
        batches of their own without moving this loader's iterator, its saved position or torch's global RNG
        (:func:`~lit_tricks.functional.batchnorm.sampled_batches`)."""
        return DataLoader(self.dataset, batch_size=self.batch_size, drop_last=self.drop_last,
                          pin_memory=self.pin_memory)

    def state_dict(self) -> dict[str, Any]:
        """``StatefulDataLoader``'s single-process state: (epoch, samples yielded) of the iterator in progress."""
        if self._iterator is None:
            self._iterator, self._reuse = self._new_iterator(), True
        return self._iterator.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at a saved position (this loader's or a ``StatefulDataLoader``'s state) at the next ``iter()``."""
        self._iterator, self._reuse = None, False
        self._pending = dict(state_dict) if state_dict else None

    def fetch(self, order: Tensor, epoch: int, start: int) -> list[Tensor]:
        """The batch of dataset indices ``order`` (positions ``start..`` of ``epoch``), augmented, as ``[x, y]``."""
        dataset = self.dataset
        if not self.batched:
            samples = [dataset[(epoch, int(i))] for i in order]  # the per-sample seeds of the DataLoader path
            x = torch.stack([s[0] for s in samples])
            y = torch.tensor([s[1] for s in samples], dtype=torch.long)
            return self._pinned(x, y)
        positions = self._positions[order]
        source: TensorImages = dataset.source  # type: ignore[assignment]
        return self.finish(source.images[positions], source.targets[positions], epoch, start)

    def gather(self, order: Tensor, start: int) -> tuple[int, int, Tensor, Tensor]:
        """``(start, stop, images, targets)``: the stored images and targets of ``order[start:stop]``, whole batches
        of at most :data:`CHUNK_BYTES` of images (at least one batch), each taken in one indexing op (a copy)."""
        images: Tensor = self.dataset.source.images  # type: ignore[attr-defined]
        per_batch = max(1, images[0].numel() * images.element_size() * self.batch_size)
        stop = min(len(order), start + self.batch_size * max(1, CHUNK_BYTES // per_batch))
        positions = self._positions[order[start:stop]]
        return start, stop, images[positions], self.dataset.source.targets[positions]

    def finish(self, images: Tensor, targets: Tensor, epoch: int, start: int, copy: bool = False) -> list[Tensor]:
        """A batch ``[x, y]`` from its stored images (a private copy already, or ``copy``) and targets: as float,
        augmented with the batch's generator (:func:`batch_generator`), pinned where asked."""
        x = TensorImages.as_float(images, copy=copy)
        if (transform := self.dataset.transform) is not None:
            x = transform.apply_batch(  # type: ignore[attr-defined]
                x, batch_generator(self.dataset.seed, epoch, self.sampler.rank, start))
        return self._pinned(x, targets)

    def _pinned(self, x: Tensor, y: Tensor) -> list[Tensor]:
        return [x.pin_memory(), y.pin_memory()] if self.pin_memory else [x, y]
