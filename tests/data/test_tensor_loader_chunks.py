"""Adversarial checks of TensorLoader's chunked gather (several batches' images and targets in one index op, batches
yielded as slices): against the per-batch oracle (``TensorImages.batch`` of the batch's positions, then the batch
transform with its own generator) and against ``StatefulDataLoader`` over ``ResumableSampler``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from lit_tricks.data.sampling import ResumableSampler, SplitDataset
from lit_tricks.data.tensor_loader import TensorLoader, batch_generator
from tests.data.test_tensor_loader import assert_same, id_dataset, loaders, state_after

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

SEED = 5  # id_dataset's


class InPlaceNoise:
    """A batch transform that writes into its input (``mul_``/``add_``) and returns it."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - the per-sample path is not used here
        return x

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x.mul_(2.0).add_(torch.rand(x.shape[0], 1, 1, 1, generator=generator))


class PerSample:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand(())


def sampler(dataset: SplitDataset, replicas: int = 1, rank: int = 0, drop_last: bool = False) -> ResumableSampler:
    return ResumableSampler(dataset, seed=11, shuffle=True, num_replicas=replicas, rank=rank, drop_last=drop_last)


def chunk_of(monkeypatch: pytest.MonkeyPatch, dataset: SplitDataset, batches: int, batch_size: int) -> None:
    """Chunks of ``batches`` batches of ``batch_size``."""
    images = dataset.source.images  # type: ignore[attr-defined]
    per_batch = images[0].numel() * images.element_size() * batch_size
    monkeypatch.setattr("lit_tricks.data.tensor_loader.CHUNK_BYTES", batches * per_batch)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("batches_per_chunk", [1, 2, 100])
def test_in_place_batch_transform_matches_the_per_batch_oracle(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                                                batches_per_chunk: int) -> None:
    """Every batch (all kept until the end: a later batch's in-place transform must not reach an earlier one) equals
    ``apply_batch(source.batch(positions), batch_generator(...))``, and the stored images stay untouched."""
    dataset = id_dataset(InPlaceNoise(), dtype=dtype)
    chunk_of(monkeypatch, dataset, batches_per_chunk, 4)
    stored = dataset.source.images.clone()  # type: ignore[attr-defined]
    loader = TensorLoader(dataset, sampler(dataset), 4)
    for e in (0, 1):  # a second epoch: a new order, chunks gathered again
        loader.sampler.set_epoch(e)
        got = list(loader)
        order = torch.as_tensor(loader.sampler.order(e))
        assert len(got) == 6
        for k, (x, y) in enumerate(got):
            positions = dataset.indices[order[4 * k:4 * k + 4]]
            expected = InPlaceNoise().apply_batch(dataset.source.batch(positions),
                                                  batch_generator(SEED, e, 0, 4 * k))
            assert x.dtype == torch.float32 and torch.equal(x, expected)
            assert torch.equal(y, dataset.source.targets[positions])
    assert torch.equal(dataset.source.images, stored)  # type: ignore[attr-defined]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("rank", [0, 2])
def test_three_ranks_resumed_at_every_batch_inside_and_at_chunk_edges(monkeypatch: pytest.MonkeyPatch,
                                                                      drop_last: bool, rank: int) -> None:
    """3 replicas of 23 samples (padded to 8 each, or dropped to 7), batches of 3, chunks of 2 batches: a resume
    after every batch of epoch 1 (inside a chunk, at its edge, before the dropped or last partial batch) yields what
    StatefulDataLoader yields, and the state both write is the same."""
    dataset = id_dataset()
    chunk_of(monkeypatch, dataset, 2, 3)

    def pair() -> tuple[TensorLoader, Any]:
        return (TensorLoader(dataset, sampler(dataset, 3, rank, drop_last), 3, drop_last=drop_last),
                StatefulDataLoader(dataset, batch_size=3, sampler=sampler(dataset, 3, rank, drop_last),
                                   drop_last=drop_last))

    ours, theirs = pair()
    for loader in (ours, theirs):
        loader.sampler.set_epoch(1)
    full_ours, full_theirs = list(ours), list(theirs)
    assert_same(full_ours, full_theirs)
    assert len(full_ours) == (2 if drop_last else 3)
    for stop in range(len(full_ours) + 1):
        states = [state_after(loader, 1, stop) for loader in pair()]
        assert states[0] == states[1]
        for fresh in pair():
            fresh.load_state_dict(states[0])
            fresh.sampler.set_epoch(1)
            rest = list(itertools.islice(fresh, 10))
            if stop < len(full_ours):
                assert_same(rest, full_theirs[stop:])


def test_limit_then_second_epoch_gathers_the_new_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch cut after one batch (limit_train_batches), then the next epoch: its batches are the new order's."""
    dataset = id_dataset()
    ours = TensorLoader(dataset, sampler(dataset), 4)
    theirs = StatefulDataLoader(dataset, batch_size=4, sampler=sampler(dataset))
    got, ref = [], []
    for loader, out in ((ours, got), (theirs, ref)):
        for e in range(3):
            loader.sampler.set_epoch(e)
            out += list(itertools.islice(loader, 1 + e))
    assert_same(got, ref)


@pytest.mark.parametrize(("before", "after"), [(None, InPlaceNoise()), (None, PerSample()),
                                               (PerSample(), InPlaceNoise()), (InPlaceNoise(), PerSample()),
                                               (InPlaceNoise(), None)])
def test_transform_replaced_after_the_loader_was_built(before: Any, after: Any) -> None:
    """``dataset.transform`` set after construction: the loader yields what a loader built with it yields (the
    per-batch ``isinstance`` the loader made before its chunks)."""
    dataset = id_dataset(transform=before)
    loader = TensorLoader(dataset, sampler(dataset), 4)
    dataset.transform = after
    fresh_dataset = id_dataset(transform=after)
    fresh = TensorLoader(fresh_dataset, sampler(fresh_dataset), 4)
    for each in (loader, fresh):
        each.sampler.set_epoch(1)
    assert_same(list(loader), list(fresh))


def test_bn_recalibration_batches_leave_the_training_loaders_position_and_rng() -> None:
    # EMAWeights(recalibrate_bn_batches) and CheckpointEnsemble read batches through sampled_batches: with the
    # TensorLoader (the default for in-memory sets) they used to iterate the training loader itself, replacing its
    # iterator (the checkpoint's data position) and drawing from torch's global RNG
    from lit_tricks.functional.batchnorm import sampled_batches
    ours, _ = loaders(id_dataset(), 5)
    ours.sampler.set_epoch(1)
    it = iter(ours)
    next(it), next(it)
    state, rng = ours.state_dict(), torch.get_rng_state()
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in sampled_batches(ours, seed=3)])
    assert ours.state_dict() == state and torch.equal(torch.get_rng_state(), rng)
    assert sorted(seen.tolist()) == sorted(id_dataset().source.images[id_dataset().indices, 0, 0, 0].tolist())
    again = torch.cat([x[:, 0, 0, 0] for x, _ in sampled_batches(ours, seed=3)])
    assert torch.equal(seen, again)  # the same seed, the same batches
    third = next(it)  # the training iterator goes on where it was
    assert ours.state_dict()["_num_yielded"] == 3 and third[0].shape[0] == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_a_batch_owns_its_storage_not_the_chunks(dtype: torch.dtype) -> None:
    # a kept or torch.save'd batch must not carry the whole gathered chunk with it
    ours, _ = loaders(id_dataset(dtype=dtype), 5)
    for x, y in epoch_of(ours):
        assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
        assert y.untyped_storage().nbytes() == y.numel() * y.element_size()


def epoch_of(loader: Any) -> list[list[torch.Tensor]]:
    loader.sampler.set_epoch(1)
    return list(loader)
