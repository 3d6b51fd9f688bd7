"""lit_tricks.weight_variants: the registry a callback offers weights through, and the module-side protocol."""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Iterator

import pytest
from torch import nn

from lit_tricks.weight_variants import SupportsWeightVariants, WeightVariants, weight_variants_of

entered: list[str] = []


@contextlib.contextmanager
def swap() -> Iterator[None]:
    entered.append("in")
    yield


class WithVariants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight_variants = WeightVariants()


def test_registry_adds_removes_and_maps_metrics_to_their_variant() -> None:
    variants = WeightVariants()
    variants.add("ema", swap)
    assert "ema" in variants and len(variants) == 1 and variants.items() == [("ema", swap)]
    assert variants.metric_name("val/acc", "ema") == "val/acc_ema"
    assert variants.variant_of("val/acc_ema") == "ema" and variants.variant_of("val/acc") is None
    assert variants.variant_of("val/other_ema") is None  # only names the module built, never a suffix match
    assert variants.metrics_of("ema") == ["val/acc_ema"]
    variants.remove("ema", context=lambda: contextlib.nullcontext())  # another context: kept
    assert variants.context("ema") is swap
    variants.remove("ema")
    assert len(variants) == 0 and variants.context("ema") is None
    with pytest.raises(ValueError, match="non-empty str"):
        variants.add("", swap)


def test_protocol_is_structural_and_copies_start_empty() -> None:
    module = WithVariants()
    module.weight_variants.add("ema", swap)
    assert isinstance(module, SupportsWeightVariants) and weight_variants_of(module) is module.weight_variants
    assert not isinstance(nn.Linear(1, 1), SupportsWeightVariants) and weight_variants_of(nn.Linear(1, 1)) is None
    assert len(copy.deepcopy(module).weight_variants) == 0
    assert len(pickle.loads(pickle.dumps(module.weight_variants))) == 0
