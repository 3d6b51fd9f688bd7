"""MixUp and CutMix targets and inputs against the papers' formulas, read back from the output (the partner of sample i
is sample i - 1, as documented):

- MixUp (Zhang et al., 2018): ``x = lam x_i + (1 - lam) x_j``, ``y = lam y_i + (1 - lam) y_j``, ``lam ~ Beta(a, a)``
  (a Kolmogorov-Smirnov test against scipy's Beta);
- CutMix (Yun et al., 2019): ``x = M * x_i + (1 - M) * x_j`` with ``M`` zero on one box, ``y = lam y_i + (1 - lam)
  y_j`` with ``lam`` the kept share of the area (a segment of a 1-D signal);
- the loss: soft-target cross-entropy equals ``lam CE(y_i) + (1 - lam) CE(y_j)`` (label smoothing mixing in eps/K).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from lit_tricks.augment import batch_mix
from lit_tricks.modules.trick_module import TrickModule

K = 5


def _labels(n: int) -> Tensor:
    return torch.arange(n) % K  # with n a multiple of K, neighbours always differ: lam is readable from y[i, y_i]


def _partner(t: Tensor) -> Tensor:
    return t.roll(1, 0)


def test_mixup_inputs_and_targets_are_the_convex_combination() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(10, 2, 4, 4), _labels(10)
    xm, ym = batch_mix("mixup", alpha=0.4, num_classes=K)(x, y)
    lam = ym[torch.arange(10), y]
    assert torch.allclose(lam, lam[0].expand(10)) and 0 < float(lam[0]) < 1  # one lam per batch
    onehot = F.one_hot(y, K).float()
    torch.testing.assert_close(ym, lam[0] * onehot + (1 - lam[0]) * _partner(onehot))
    torch.testing.assert_close(xm, lam[0] * x + (1 - lam[0]) * _partner(x))


def test_mixup_lambda_is_beta_distributed() -> None:
    torch.manual_seed(0)
    mix = batch_mix("mixup", alpha=0.4, num_classes=K)
    x, y = torch.zeros(2, 1, 1, 1), _labels(2)
    lams = [float(mix(x, y)[1][0, 0]) for _ in range(1500)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3


@pytest.mark.parametrize("shape", [(8, 8), (1, 24)], ids=["image", "signal"])
def test_cutmix_pastes_one_box_and_weights_targets_by_the_kept_area(shape: tuple[int, int]) -> None:
    torch.manual_seed(3)
    n = 6
    x = torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 2, *shape).clone()  # sample i is the constant i + 1
    y = _labels(n)
    mix = batch_mix("cutmix", alpha=1.0, num_classes=K)
    seen_cut = False
    for _ in range(5):
        xm, ym = mix(x, y)
        keep = (xm == x).float()  # M: 1 where the sample kept its own pixel
        assert torch.equal(xm, keep * x + (1 - keep) * _partner(x))  # x = M x_i + (1 - M) x_j
        cut = 1 - keep[0, 0]
        rows, cols = cut.sum(1).nonzero().flatten(), cut.sum(0).nonzero().flatten()
        if rows.numel():  # the cut region is one axis-aligned box, the same for every sample
            box = torch.zeros_like(cut)
            box[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1] = 1
            assert torch.equal(cut, box) and all(torch.equal(1 - keep[i, c], cut) for i in range(n) for c in (0, 1))
            seen_cut = True
        lam = float(keep[0, 0].mean())  # the kept share of the area
        onehot = F.one_hot(y, K).float()
        torch.testing.assert_close(ym, lam * onehot + (1 - lam) * _partner(onehot))
    assert seen_cut


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_soft_target_loss_is_the_lambda_weighted_cross_entropy(smoothing: float) -> None:
    torch.manual_seed(0)
    module = TrickModule(torch.nn.Linear(3, K), label_smoothing=smoothing)
    out, y = torch.randn(6, K), _labels(6)
    lam = 0.3
    soft = lam * F.one_hot(y, K).float() + (1 - lam) * F.one_hot(_partner(y), K).float()
    expected = (lam * F.cross_entropy(out, y, label_smoothing=smoothing)
                + (1 - lam) * F.cross_entropy(out, _partner(y), label_smoothing=smoothing))
    torch.testing.assert_close(module.compute_loss(out, soft), expected)
