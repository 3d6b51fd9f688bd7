"""TrickModule(shard=...): checked in one line, and refused where it does not fit the strategy (the sharded fit
itself runs under ModelParallelStrategy in tests/matrix/test_sharded.py)."""

from __future__ import annotations

import pytest
from torch import nn

from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.validation import ArgumentError


def _module(shard: str) -> TrickModule:
    return TrickModule(nn.Sequential(nn.Linear(4, 3)), num_classes=3, shard=shard)


def test_shard_is_checked_and_names_the_argument() -> None:
    with pytest.raises(ArgumentError, match="shard must be one of") as err:
        _module("layers")
    assert "\n" not in str(err.value)


def test_shard_modes_without_a_device_mesh() -> None:
    _module("auto").configure_model()  # auto: nothing to do without ModelParallelStrategy
    _module("none").configure_model()
    with pytest.raises(ArgumentError, match=r"shard needs trainer\.strategy=ModelParallelStrategy"):
        _module("blocks").configure_model()


def test_shard_none_under_model_parallel_is_refused() -> None:
    module = _module("none")
    module._device_mesh = object()  # type: ignore[assignment]  # what ModelParallelStrategy sets before configure_model
    with pytest.raises(ArgumentError, match="the model must be sharded"):
        module.configure_model()
