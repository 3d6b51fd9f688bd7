"""TensorLoader against the loader it replaces: ``StatefulDataLoader`` over ``ResumableSampler`` (torchdata), and the
rank split of torch's ``DistributedSampler``. Every sample's image holds its own id, so equal batches mean equal sample
ids in equal order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch.utils.data import DistributedSampler

from lit_tricks.data import MNIST1DDataModule
from lit_tricks.data.digits import DigitsDataModule
from lit_tricks.data.sampling import ResumableSampler, SplitDataset, TensorImages, train_loader
from lit_tricks.data.tensor_loader import TensorLoader, batch_generator

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

N = 23  # no batch size below divides it


@pytest.fixture(autouse=True, params=[None, 100, 1], ids=["whole-epoch-chunks", "two-batch-chunks", "batch-chunks"])
def chunk_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test also with chunks of two batches of 5 (8-byte images) and of one batch: chunk edges, mid-chunk
    resumes and a last partial chunk give the same batches."""
    if request.param is not None:
        monkeypatch.setattr("lit_tricks.data.tensor_loader.CHUNK_BYTES", request.param)


def id_dataset(transform: Any = None, seed: int = 5, dtype: torch.dtype = torch.float32) -> SplitDataset:
    """23 of 60 pool samples (a split), each image ``(1, 1, 2)`` = (its pool id, 0) stored as ``dtype`` (uint8 holds
    the id too); targets = id % 3."""
    pool = torch.arange(60, dtype=torch.float64)
    images = torch.stack([pool, torch.zeros(60, dtype=torch.float64)], -1)[:, None, None, :].to(dtype)
    source = TensorImages(images, torch.arange(60) % 3)
    return SplitDataset(source, torch.arange(60)[::2][:N].flip(0), transform, seed=seed)


def loaders(dataset: SplitDataset, batch_size: int, shuffle: bool = True, drop_last: bool = False,
            replicas: int = 1, rank: int = 0) -> tuple[TensorLoader, Any]:
    def sampler() -> ResumableSampler:
        return ResumableSampler(dataset, seed=11, shuffle=shuffle, num_replicas=replicas, rank=rank,
                                drop_last=drop_last)

    ours = TensorLoader(dataset, sampler(), batch_size, drop_last=drop_last)
    theirs = StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler(), drop_last=drop_last)
    return ours, theirs


def epoch(loader: Any, e: int, limit: int | None = None) -> list[list[torch.Tensor]]:
    loader.sampler.set_epoch(e)
    return list(itertools.islice(loader, limit))


def state_after(loader: Any, e: int, stop: int) -> dict[str, Any]:
    """The state ``loader`` saves after yielding ``stop`` batches of epoch ``e``."""
    loader.sampler.set_epoch(e)
    it = iter(loader)
    for _ in range(stop):
        next(it)
    return loader.state_dict()  # type: ignore[no-any-return]


def assert_same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize(("shuffle", "drop_last", "batch_size"), [(True, False, 5), (False, False, 5),
                                                                  (True, True, 4), (False, True, 23)])
def test_same_batches_state_and_global_rng_as_the_stateful_dataloader(shuffle: bool, drop_last: bool,
                                                                      batch_size: int) -> None:
    ours, theirs = loaders(id_dataset(), batch_size, shuffle, drop_last)
    assert len(ours) == len(theirs)
    torch.manual_seed(0)
    mine = [epoch(ours, e) for e in range(3)]
    rng_mine = torch.get_rng_state()
    torch.manual_seed(0)
    ref = [epoch(theirs, e) for e in range(3)]
    assert torch.equal(rng_mine, torch.get_rng_state())  # the same draws from the global RNG (dropout follows)
    for a, b in zip(mine, ref):
        assert_same(a, b)
    assert (mine[0][0][0] != mine[1][0][0]).any() == shuffle  # epochs reshuffle, or keep the fixed order
    assert ours.state_dict() == theirs.state_dict()


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("stop", [0, 1, 3, 5])  # 5 = after the epoch's last batch (resumes with the next epoch)
@pytest.mark.parametrize(("saver", "loader"), [(0, 0), (0, 1), (1, 0)])  # 0 = TensorLoader, 1 = StatefulDataLoader
def test_mid_epoch_resume_across_both_loaders(shuffle: bool, stop: int, saver: int, loader: int) -> None:
    """Stopped after ``stop`` of epoch 1's 5 batches: both loaders write the same state, and a fresh loader of
    either kind given that state yields the uninterrupted run's next batches."""
    dataset = id_dataset()
    reference = loaders(dataset, 5, shuffle)[0]
    full = epoch(reference, 1) + epoch(reference, 2)
    states = [state_after(first, 1, stop) for first in loaders(dataset, 5, shuffle)]
    assert states[0] == states[1]
    fresh = loaders(dataset, 5, shuffle)[loader]
    fresh.load_state_dict(states[saver])
    fresh.sampler.set_epoch(0)  # a stale epoch on the sampler: the state's epoch wins
    assert_same(list(fresh), full[stop:5] if stop < 5 else full[5:])


def test_state_before_the_first_iter_does_not_draw_twice() -> None:
    ours, theirs = loaders(id_dataset(), 5)
    results = []
    for loader in (ours, theirs):
        torch.manual_seed(0)
        state = loader.state_dict()  # torchdata creates the iterator here (one base-seed draw) and reuses it
        batches = epoch(loader, 0, 2)
        results.append((state, batches, torch.get_rng_state()))
    assert results[0][0] == results[1][0]
    assert_same(results[0][1], results[1][1])
    assert torch.equal(results[0][2], results[1][2])


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_split_is_torch_distributed_samplers(shuffle: bool, drop_last: bool) -> None:
    """Two ranks: each rank's sample ids are torch's DistributedSampler's for that rank (pad or drop to equal
    shares), in its order, epoch after epoch."""
    dataset = id_dataset()
    pool_ids = dataset.indices
    seen = []
    for rank in (0, 1):
        ours, _ = loaders(dataset, 4, shuffle, drop_last, replicas=2, rank=rank)
        oracle = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=shuffle, seed=11, drop_last=drop_last)
        for e in range(2):
            oracle.set_epoch(e)
            ids = torch.cat([x[:, 0, 0, 0] for x, _ in epoch(ours, e)]).long()
            expected = pool_ids[list(oracle)]
            assert len(expected) == (N // 2 if drop_last else -(-N // 2))
            if drop_last:  # the loader's drop_last drops the partial batch too
                expected = expected[: len(expected) // 4 * 4]
            assert torch.equal(ids, expected)
            seen.append(ids)
    assert not any(set(seen[0].tolist()) & set(seen[2].tolist())) == drop_last  # padding repeats a sample


class Shift:
    """A per-sample transform without ``apply_batch``: +U(0, 1), from torch's global RNG (seeded per sample)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand(())


class BatchShift(Shift):
    def apply_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + torch.rand(x.shape[0], 1, 1, 1, generator=generator)


def test_per_sample_transforms_keep_the_dataloaders_values() -> None:
    ours, theirs = loaders(id_dataset(Shift()), 5)
    assert_same(epoch(ours, 1), epoch(theirs, 1))


def test_batch_transform_streams_follow_the_position_not_the_run() -> None:
    """The batch at position p of epoch e is augmented from batch_generator(seed, e, rank, p): the same after a
    resume as in the uninterrupted run, different from batch to batch and epoch to epoch."""
    dataset = id_dataset(BatchShift(), seed=5)
    ours, _ = loaders(dataset, 5)
    full = epoch(ours, 1)
    plain = epoch(loaders(id_dataset(None), 5)[0], 1)
    for k, ((x, _), (x0, _)) in enumerate(zip(full, plain)):
        noise = torch.rand(x.shape[0], 1, 1, 1, generator=batch_generator(5, 1, 0, 5 * k))
        assert torch.equal(x, x0 + noise)
    resumed, _ = loaders(dataset, 5)
    it = iter(resumed)
    resumed.sampler.set_epoch(1)
    next(it), next(it)
    again, _ = loaders(dataset, 5)
    again.load_state_dict(resumed.state_dict())
    assert_same(list(again), full[2:])


def test_datamodules_use_it_in_memory_without_workers(tmp_path: Any) -> None:
    """The DataModule hook: TensorLoader for in-memory pools and no workers, the same batches as the DataLoader."""
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, TensorLoader)
    reference = train_loader(SplitDataset(dm.source, dm.split_indices["train"], seed=0), batch_size=64, num_workers=0,
                             seed=0)
    assert_same(epoch(loader, 2), epoch(reference, 2))
    assert not isinstance(DigitsDataModule(batch_size=64, num_workers=1).train_dataloader(), TensorLoader)
    fixed = MNIST1DDataModule(data_dir=None, num_samples=200, shuffle=False, batch_size=50)
    first = epoch(fixed.train_dataloader(), 3, 1)[0][0]
    assert torch.equal(first, fixed.dataset("train").source.batch(fixed.split_indices["train"][:50]))


def test_overfit_batches_gets_the_dataloader_lightning_can_make_sequential(tmp_path: Any) -> None:
    """``Trainer(overfit_batches=2)`` replaces a DataLoader's sampler by a SequentialSampler (the TensorLoader has
    none to replace): the DataModule hands it a DataLoader, and both epochs train on the same first 2 batches."""
    from torch import nn

    from lit_tricks.modules import TrickModule
    from tests.helpers.tiny import tiny_trainer

    seen: list[list[int]] = []

    class Recorder(TrickModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch[1].tolist())
            return super().training_step(batch, batch_idx)

    dm = DigitsDataModule(batch_size=16, val_fraction=0.0)
    trainer = tiny_trainer(tmp_path, overfit_batches=2, max_epochs=2, limit_val_batches=0)
    trainer.fit(Recorder(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), datamodule=dm)
    assert not isinstance(trainer.train_dataloader, TensorLoader)
    assert len(seen) == 4 and seen[:2] == seen[2:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("indices", [torch.tensor([2, 0]), torch.tensor(1), torch.tensor([True, False, True]),
                                     slice(0, 2), [0, 2]])
def test_batch_is_a_copy_an_in_place_transform_cannot_write_through(dtype: torch.dtype, indices: Any) -> None:
    """``TensorImages.batch`` skips the second copy of a float batch: what indexing returns must then be a copy
    already (a 0-d index or a slice gives a view, so it is copied)."""
    images = torch.arange(3 * 2 * 2, dtype=dtype).reshape(3, 1, 2, 2)
    stored = images.clone()
    source = TensorImages(images, torch.arange(3))
    source.batch(indices).add_(1.0)
    assert torch.equal(source.images, stored)


def test_in_place_changes_to_a_batch_reach_neither_the_stored_images_nor_other_batches() -> None:
    # batches are slices of one gathered chunk: an in-place op on one must stay in its own rows
    dataset = id_dataset()
    stored = dataset.source.images.clone()  # type: ignore[attr-defined]
    ours, theirs = loaders(dataset, 5)
    batches = epoch(ours, 1)
    for x, y in batches:
        x.add_(1000.0)
        y.add_(7)
    assert torch.equal(dataset.source.images, stored)  # type: ignore[attr-defined]
    for (x, y), (x0, y0) in zip(batches, epoch(theirs, 1)):
        assert torch.equal(x, x0 + 1000.0) and torch.equal(y, y0 + 7)
