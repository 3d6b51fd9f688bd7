"""lit_tricks.functional.soup: the greedy soup against a hand-written greedy loop (the paper's Recipe 1 over
``average_state_dicts``), the order, and the one-line architecture refusal."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_tricks.functional.ensemble import average_state_dicts
from lit_tricks.functional.soup import check_same_architecture, greedy_order, greedy_soup


def _members(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g),
             "bn.num_batches_tracked": torch.tensor(i)} for i in range(n)]


def _score(target: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], float]:
    def score(sd: dict[str, torch.Tensor]) -> float:
        return -float((sd["w"].double() - target).pow(2).sum())
    return score


def _hand_written(members: list[dict[str, torch.Tensor]], scores: list[float],
                  evaluate: Callable[[dict[str, torch.Tensor]], float]) -> tuple[list[int], float]:
    order = sorted(range(len(members)), key=lambda i: -scores[i])  # best first; stable for ties
    soup, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        score = evaluate(average_state_dicts([members[j] for j in [*soup, i]]))
        if score > best:
            soup.append(i)
            best = score
    return soup, best


@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=40, deadline=None)
def test_greedy_soup_equals_a_hand_written_greedy_loop(n: int, seed: int) -> None:
    members = _members(n, seed)
    target = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 0.3
    evaluate = _score(target)
    scores = [evaluate(m) for m in members]
    result = greedy_soup(members, scores, evaluate)
    expected_members, expected_score = _hand_written(members, scores, evaluate)
    assert result.members == expected_members
    assert result.score == pytest.approx(expected_score, rel=1e-12)
    expected = average_state_dicts([members[j] for j in expected_members])
    eps = torch.finfo(torch.float32).eps
    for k, v in expected.items():
        torch.testing.assert_close(result.state_dict[k], v, rtol=4 * eps, atol=4 * eps)
    assert result.state_dict["bn.num_batches_tracked"] == members[expected_members[0]]["bn.num_batches_tracked"]
    assert [i for i, _, added in result.trace if added] == expected_members[1:]


def test_min_improvement_and_min_mode() -> None:
    members = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([1.0])}]
    loss = {0.0: 1.0, 2.0: 3.0, 1.0: 2.0, 0.5: 0.9, 1.5: 0.95, 1.0 / 1.5: 0.8}  # held-out loss of each average

    def evaluate(sd: dict[str, torch.Tensor]) -> float:
        return min(v for k, v in loss.items() if abs(k - float(sd["w"])) < 1e-6)

    scores = [evaluate(m) for m in members]
    assert greedy_order(scores, "min") == [0, 2, 1]
    soup = greedy_soup(members, scores, evaluate, mode="min")
    assert soup.members == [0, 2] and soup.score == 0.9  # avg(0, 1) = 0.5 improves; avg(0, 1, 2) = 1 does not
    assert greedy_soup(members, scores, evaluate, mode="min", min_improvement=0.2).members == [0]


def test_order_puts_nan_last_and_keeps_ties_in_order() -> None:
    assert greedy_order([0.5, math.nan, 0.9, 0.5]) == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="mode"):
        greedy_order([1.0], "up")


def test_different_architectures_are_refused_in_one_line() -> None:
    a = {"w": torch.zeros(4, 3)}
    for other, match in (({"w": torch.zeros(5, 3)}, r"w is \(5, 3\)"), ({"v": torch.zeros(4, 3)}, "tensor names"),
                         ({"w": torch.zeros(4, 3, dtype=torch.float64)}, "float64")):
        with pytest.raises(ValueError, match=match) as err:
            check_same_architecture([a, other], names=["job 1", "job 7"])
        assert "\n" not in str(err.value) and "different architectures" in str(err.value)
