"""collect/restore RNG states: round trip reproduces torch, numpy and python draws; weights_only loadable."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_tricks.fault.rng import collect_rng_states, restore_rng_states


def _draw() -> tuple[torch.Tensor, np.ndarray, float, float]:
    return torch.rand(5), np.random.rand(5), random.random(), float(np.random.randn())


def test_restore_reproduces_every_generator(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    states = collect_rng_states()
    first = _draw()
    buffer = io.BytesIO()
    torch.save(states, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain types and tensors only
    _draw()
    restore_rng_states(loaded)
    second = _draw()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2] and first[3] == second[3]


def test_restore_rejects_non_dict() -> None:
    with pytest.raises(TypeError, match="states"):
        restore_rng_states([1, 2])  # type: ignore[arg-type]
