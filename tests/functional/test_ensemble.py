"""lit_tricks.functional.ensemble: combine rules, loop == vmap, export without lit_tricks, soup, BN recalibration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_tricks.functional.ensemble import (
    COMBINERS,
    EnsembleModule,
    average_state_dicts,
    combine,
    export_ensemble,
    recalibrate_bn_,
)
from tests.helpers.tolerance import ulps


def make_members(n: int = 3) -> list[nn.Module]:
    members = []
    for i in range(n):
        torch.manual_seed(i)
        m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
        m[1].running_mean.normal_()
        members.append(m.eval())
    return members


def test_combine_rules_closed_form() -> None:
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(combine(logits, "mean_prob"), sum(z.softmax(-1) for z in logits) / 3)
    torch.testing.assert_close(combine(logits, "mean_logit"), (logits.sum(0) / 3).softmax(-1))
    votes = combine(logits, "vote")
    expected = torch.stack([nn.functional.one_hot(z.argmax(-1), 4).float() for z in logits]).mean(0)
    assert torch.equal(votes, expected)
    for name in COMBINERS:
        torch.testing.assert_close(combine(logits, name).sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="mean_prob"):
        combine(logits, "median")


def test_ensemble_probs_equal_mean_of_members_one_by_one_loop_and_vmap() -> None:
    members = make_members()
    x = torch.randn(7, 6)
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
        loop = EnsembleModule(members)(x)
        vmapped = EnsembleModule(members, use_vmap=True)(x)
    assert torch.equal(loop, expected)
    torch.testing.assert_close(vmapped, expected, **ulps(torch.float32, 16))  # probabilities: bmm vs mm
    with pytest.raises(ValueError, match="combine"):
        EnsembleModule(members, combine="max")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_export_reloads_in_a_process_without_lit_tricks(tmp_path: Path) -> None:
    members = make_members()
    x = torch.randn(5, 6)
    exported = export_ensemble(members, "mean_prob")
    with torch.no_grad():
        expected = EnsembleModule(members)(x)
        assert torch.equal(exported(x), expected)
    torch.save(exported, tmp_path / "ens.pt")
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "m = torch.load('ens.pt', weights_only=False)\n"
        "io = torch.load('io.pt')\n"
        "assert torch.equal(m(io['x']), io['expected'])\n"
        "assert not any(k == 'lit_tricks' or k.startswith('lit_tricks.') for k in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_average_state_dicts_is_uniform_mean_and_copies_integers() -> None:
    members = make_members()
    sds = [m.state_dict() for m in members]
    soup = average_state_dicts(sds)
    torch.testing.assert_close(soup["0.weight"], (sds[0]["0.weight"] + sds[1]["0.weight"] + sds[2]["0.weight"]) / 3)
    assert soup["1.num_batches_tracked"].dtype == torch.long
    assert torch.equal(soup["1.num_batches_tracked"], sds[0]["1.num_batches_tracked"])
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([sds[0], {"x": torch.zeros(1)}])


def test_recalibrate_bn_equals_exact_batch_statistics() -> None:
    model = make_members(1)[0]
    data = torch.randn(40, 6) * 2 + 1
    batches = [(data[i: i + 10], None) for i in range(0, 40, 10)]
    momentum = model[1].momentum
    assert recalibrate_bn_(model, batches) == 4
    assert not model.training and model[1].momentum == momentum
    with torch.no_grad():
        h = model[0](data)
    # cumulative average of per-batch means (equal batch sizes) = the mean over all data
    torch.testing.assert_close(model[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
