"""The one BatchNorm recalibration: torch's update_bn as the oracle, the batch-unpacking rule, restore on error."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from lit_tricks.functional.batchnorm import batch_inputs, recalibrate_bn_, sampled_batches


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_matches_torch_update_bn_with_the_same_unpacking_rule() -> None:
    data = [(torch.randn(6, 3), torch.zeros(6)) for _ in range(3)] + [torch.randn(6, 3)]  # tuples and a bare tensor
    ours, ref = _net(), _net()
    assert recalibrate_bn_(ours, data, num_batches=3) == 3
    torch.optim.swa_utils.update_bn(data[:3], ref)
    torch.testing.assert_close(ours[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var)
    assert batch_inputs([1, 2]) == 1 and batch_inputs((3,)) == 3 and batch_inputs("x") == "x"


def test_restores_mode_and_momentum_after_an_error() -> None:
    model = _net().eval()

    def boom(m: nn.Module, batch: object) -> None:
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        recalibrate_bn_(model, [torch.randn(2, 3)], boom)
    assert not model.training and model[1].momentum == 0.1


def test_no_batchnorm_is_a_no_op() -> None:
    model = nn.Linear(3, 2)
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_bn_(model, [torch.randn(2, 3)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------- sampled_batches
def _ids(batches: Any) -> list[list[int]]:
    return [[int(i) for i in b[0]] for b in batches]


def test_sampled_batches_move_neither_the_training_loaders_position_nor_the_global_rng() -> None:
    """The oracle is the same loader never recalibrated: its next batches and its saved state are unchanged."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    data = TensorDataset(torch.arange(40))

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))

    used, untouched = loader(), loader()
    it, ref = iter(used), iter(untouched)
    assert _ids([next(it), next(it)]) == _ids([next(ref), next(ref)])
    saved, rng = used.state_dict(), torch.get_rng_state()
    first = _ids(sampled_batches(used, seed=5))
    assert torch.equal(torch.get_rng_state(), rng) and used.state_dict() == saved
    assert _ids(it) == _ids(ref)  # the rest of the epoch: the same batches
    assert first == _ids(sampled_batches(used, seed=5)) != _ids(sampled_batches(used, seed=6))
    assert sorted(i for b in first for i in b) == list(range(40))  # a permutation of the whole dataset


def test_sampled_batches_keep_batch_size_and_drop_last_of_a_batch_sampler() -> None:
    data = TensorDataset(torch.arange(10))
    plain = DataLoader(data, batch_size=4, drop_last=True)
    by_sampler = DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 4, drop_last=True))
    for loader in (plain, by_sampler):
        assert [len(b) for b in _ids(sampled_batches(loader, seed=0))] == [4, 4]
    kept = DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 4, drop_last=False))
    assert [len(b) for b in _ids(sampled_batches(kept, seed=0))] == [4, 4, 2]


def test_sampled_batches_refuse_a_batch_sampler_without_a_batch_size() -> None:
    data = TensorDataset(torch.arange(6))
    with pytest.raises(ValueError, match="list has no batch_size"):
        sampled_batches(DataLoader(data, batch_sampler=[[0, 1], [2, 3, 4], [5]]), seed=0)
    whole = DataLoader([(torch.arange(3),), (torch.arange(3, 6),)], batch_size=None)  # samples are batches
    assert sorted(_ids(sampled_batches(whole, seed=0))) == [[0, 1, 2], [3, 4, 5]]


def test_sampled_batches_are_the_same_on_every_ddp_rank() -> None:
    """Each rank's train loader holds its own DistributedSampler shard; the recalibration batches come from the whole
    dataset in the same order on every rank, so the recalibrated statistics agree across ranks as the weights do."""
    data = TensorDataset(torch.arange(24))
    ranks = [DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=2, rank=r, seed=1))
             for r in (0, 1)]
    assert _ids(ranks[0]) != _ids(ranks[1])
    assert _ids(sampled_batches(ranks[0], seed=9)) == _ids(sampled_batches(ranks[1], seed=9))


def test_sampled_batches_of_an_iterable_dataset_read_a_loader_of_their_own() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
            return iter((torch.tensor(i),) for i in range(7))

    loader = DataLoader(Stream(), batch_size=3)
    it = iter(loader)
    assert _ids([next(it)]) == [[0, 1, 2]]
    assert _ids(sampled_batches(loader, seed=0)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert _ids(it) == [[3, 4, 5], [6]]
    assert sampled_batches([1, 2], seed=0) == [1, 2]  # not a DataLoader: as it is
