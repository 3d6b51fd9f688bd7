"""Soft-target cross-entropy vs torch's, binning and the binned expected value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_tricks.functional.losses import (
    bin_centers,
    binned_expected_value,
    binned_loss,
    binned_point,
    soft_target_cross_entropy,
    value_to_bin,
)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_targets_match_torch(eps: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    probs = torch.softmax(torch.randn(6, 5), -1)
    y = torch.randint(0, 5, (6,))
    assert torch.allclose(soft_target_cross_entropy(logits, probs, eps), F.cross_entropy(logits, probs,
                                                                                         label_smoothing=eps))
    assert torch.allclose(soft_target_cross_entropy(logits, y, eps), F.cross_entropy(logits, y, label_smoothing=eps))
    one_hot = F.one_hot(y, 5).float()
    assert torch.allclose(soft_target_cross_entropy(logits, one_hot, eps), soft_target_cross_entropy(logits, y, eps))


def test_bins_and_expected_value() -> None:
    edges = torch.tensor([0.0, 1.0, 2.0, 4.0])
    assert torch.equal(bin_centers(edges), torch.tensor([0.5, 1.5, 3.0]))
    assert value_to_bin(torch.tensor([-5.0, 0.0, 0.99, 1.0, 3.9, 9.0]), edges).tolist() == [0, 0, 0, 1, 2, 2]
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert torch.allclose(binned_expected_value(logits, edges), torch.tensor([0.25 * 0.5 + 0.25 * 1.5 + 0.5 * 3.0]))
    assert torch.allclose(binned_point(logits, edges, "mode"), torch.tensor([3.0]))
    assert torch.allclose(binned_point(logits, edges, "median"), torch.tensor([2.0]))  # CDF reaches 0.5 at edge 2
    loss = binned_loss(logits, torch.tensor([3.0]), edges)
    assert torch.allclose(loss, -torch.log(torch.tensor(0.5)))


def test_bad_bins_and_smoothing_raise() -> None:
    with pytest.raises(ValueError, match="increasing"):
        bin_centers(torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="one logit per bin"):
        binned_loss(torch.zeros(2, 4), torch.zeros(2), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        soft_target_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0)
