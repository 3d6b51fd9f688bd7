"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time"): the greedy soup and the same-architecture check (torch only).

Greedy soup (the paper's Recipe 1): order the members by held-out score, best first; start the soup with the best;
add each next member only when the uniform average of the soup plus that member scores strictly better on the
held-out split than the soup without it. The uniform soup is
:func:`lit_tricks.functional.ensemble.average_state_dicts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lit_tricks.functional.batchnorm import batch_inputs, recalibrate_bn_
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = ["GreedySoup", "accuracy", "check_same_architecture", "greedy_order", "greedy_soup", "greedy_soup_module"]

_M = TypeVar("_M", bound=nn.Module)


def check_same_architecture(state_dicts: Sequence[Mapping[str, Tensor]], names: Sequence[str] | None = None) -> None:
    """Raise a one-line ``ValueError`` unless every state dict has the keys, shapes and dtypes of the first."""
    if not state_dicts:
        raise ValueError("members must hold at least one state dict, got none")
    label = list(names) if names is not None else [f"member {i}" for i in range(len(state_dicts))]
    ref = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if sd.keys() != ref.keys():
            diff = sorted(set(sd) ^ set(ref))
            raise ValueError(f"members have different architectures: {label[i]} and {label[0]} differ in "
                             f"{len(diff)} tensor names, e.g. {diff[:3]}")
        for key, t in sd.items():
            if t.shape != ref[key].shape or t.dtype != ref[key].dtype:
                raise ValueError(f"members have different architectures: {key} is {tuple(t.shape)} {t.dtype} in "
                                 f"{label[i]}, {tuple(ref[key].shape)} {ref[key].dtype} in {label[0]}")


def greedy_order(scores: Sequence[float], mode: str = "max") -> list[int]:
    """Member indices by held-out score, best first (ties keep the given order; NaN scores last)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be one of ['max', 'min'], got {mode!r}")
    sign = -1.0 if mode == "max" else 1.0
    return sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), sign * scores[i] if not
                                                     math.isnan(scores[i]) else 0.0))


@dataclass
class GreedySoup:
    """The result of :func:`greedy_soup`: ``members`` (indices into the input, in the order added), the soup's
    ``state_dict`` and held-out ``score``, and ``trace``: one ``(member, soup score with it, added)`` per candidate
    after the first member."""

    members: list[int]
    state_dict: dict[str, Tensor]
    score: float
    trace: list[tuple[int, float, bool]] = field(default_factory=list)


def _better(new: float, old: float, mode: str, min_improvement: float) -> bool:
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old + min_improvement if mode == "max" else new < old - min_improvement


@torch.no_grad()
def greedy_soup(state_dicts: Sequence[Mapping[str, Tensor]], scores: Sequence[float],
                evaluate: Callable[[dict[str, Tensor]], float], mode: str = "max",
                min_improvement: float = 0.0) -> GreedySoup:
    """Greedy soup of ``state_dicts`` (same architecture), given each member's held-out score ``scores[i]`` (scored
    as ``evaluate`` scores a soup) and ``evaluate(state_dict) -> held-out score`` of a candidate soup (recalibrate
    BatchNorm inside it).

    A candidate joins when its soup's score beats the current soup's by more than ``min_improvement`` (``mode``
    ``"max"``: higher is better). Averages are running float64 sums cast back to each tensor's dtype, as
    :func:`~lit_tricks.functional.ensemble.average_state_dicts`; integer tensors come from the best member. One
    member's state dict plus one float64 copy are held at a time besides the inputs (``state_dicts`` may be a lazy
    sequence that loads on access).
    """
    if len(state_dicts) != len(scores) or not scores:
        raise ValueError(f"need one score per state dict and at least one, got {len(state_dicts)} and {len(scores)}")
    order = greedy_order(scores, mode)
    first = dict(state_dicts[order[0]])
    floating = [k for k, v in first.items() if v.is_floating_point() or v.is_complex()]
    total = {k: first[k].detach().to(torch.float64 if first[k].is_floating_point() else torch.complex128, copy=True)
             for k in floating}

    def average(sums: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
        return {k: ((sums[k] / n).to(v.dtype) if k in sums else v.detach().clone()) for k, v in first.items()}

    soup = GreedySoup(members=[order[0]], state_dict=average(total, 1), score=float(scores[order[0]]))
    for i in order[1:]:
        sd = state_dicts[i]
        candidate_sums = {k: total[k] + sd[k].detach().to(total[k].dtype) for k in floating}
        candidate = average(candidate_sums, len(soup.members) + 1)
        score = float(evaluate(candidate))
        added = _better(score, soup.score, mode, min_improvement)
        soup.trace.append((i, score, added))
        if added:
            total = candidate_sums
            soup.members.append(i)
            soup.state_dict, soup.score = candidate, score
    return soup


@torch.no_grad()
def accuracy(module: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 accuracy of ``module(x)`` (class logits) over ``(x, y, ...)`` batches, on the module's device."""
    device = next(iter(module.parameters()), torch.zeros(())).device
    correct = total = 0
    for batch in batches:
        y = batch[1].to(device)
        correct += int((module(batch_inputs(batch).to(device)).argmax(-1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise ValueError("accuracy: the held-out batches are empty")
    return correct / total


def greedy_soup_module(module: _M, state_dicts: Sequence[Mapping[str, Tensor]],
                       score: Callable[[nn.Module], float], *, bn_batches: Iterable[Any] | None = None,
                       num_bn_batches: int | None = None, mode: str = "max",
                       names: Sequence[str] | None = None) -> tuple[_M, GreedySoup]:
    """:func:`greedy_soup` of ``state_dicts`` scored on a module: each member and each candidate soup is loaded into
    ``module`` (its weights are replaced: pass a copy), its BatchNorm statistics recomputed on ``bn_batches`` (when
    given; :func:`~lit_tricks.functional.batchnorm.recalibrate_bn_`), and scored by ``score(module)`` in eval mode
    (e.g. ``lambda m: accuracy(m, val_loader)``). Members of different architectures are refused in one line.
    Returns ``module`` holding the greedy soup (BatchNorm recalibrated, eval mode) and the :class:`GreedySoup`."""
    check_same_architecture(state_dicts, names)
    device = next(iter(module.parameters()), torch.zeros(())).device

    def evaluate(state_dict: Mapping[str, Tensor]) -> float:
        module.load_state_dict(match_wrapped_keys(dict(state_dict), module.state_dict().keys()))
        if bn_batches is not None:
            recalibrate_bn_(module, bn_batches, num_batches=num_bn_batches, device=device)
        return float(score(module.eval()))

    soup = greedy_soup(state_dicts, [evaluate(sd) for sd in state_dicts], evaluate, mode=mode)
    evaluate(soup.state_dict)  # the module ends holding the soup chosen, recalibrated
    return module, soup
