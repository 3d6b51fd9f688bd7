"""Soups beside the ensemble: the best member, the uniform soup, the greedy soup and the prediction ensemble of one
set of same-architecture members (a run's snapshot members, or sweep members that share an initialization), scored
the same way on the validation (selection) and test (report) splits, BatchNorm recalibrated for every candidate."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.fault.atomic import atomic_write_bytes
from lit_tricks.functional.ensemble import average_state_dicts, combine
from lit_tricks.functional.soup import check_same_architecture, greedy_soup
from lit_tricks.posthoc.evaluate import (
    evaluate_weights,
    has_batchnorm,
    load_state,
    markdown_table,
    rebuild_run,
    score_logits,
    split_loaders,
)
from lit_tricks.validation import ArgumentError, check_choice

__all__ = ["SOUP_SELECT", "evaluate_run_soups", "run_members", "soup_report"]

#: What the greedy soup and the best member are chosen by (held-out split only).
SOUP_SELECT = ("val/acc", "val/nll")


def run_members(run_dir: str | Path) -> list[tuple[str, dict[str, Tensor]]]:
    """The snapshot members a run's :class:`~lit_tricks.callbacks.CheckpointEnsemble` wrote
    (``<run dir>/**/member-*.pt``), by name, loaded."""
    paths = sorted(Path(run_dir).rglob("member-*.pt"))
    if not paths:
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no ensemble member files (member-*.pt) under it")
    return [(str(p.relative_to(run_dir)), load_state(p)) for p in paths]


def _ensemble_metrics(logits: Sequence[Mapping[str, Tensor]], targets: Mapping[str, Tensor],
                      method: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, y in targets.items():
        probs = combine(torch.stack([lg[split] for lg in logits]), method)
        out.update(score_logits(probs.clamp_min(1e-12).log(), y, split))
    return out


def soup_report(members: Sequence[tuple[str, Mapping[str, Tensor]]], module: nn.Module, dm: Any, *,
                select: str = "val/acc", bn_batches: int | None = None, combine_method: str = "mean_prob",
                out_dir: str | Path | None = None) -> dict[str, Any]:
    """Score each member, the uniform soup, the greedy soup (:func:`lit_tricks.functional.soup.greedy_soup`, built
    on ``select``) and the prediction ensemble (``combine_method`` over the members' logits) on every split of the
    DataModule; members are ``(name, state_dict)`` pairs of ``module``'s architecture (refused in one line
    otherwise). With ``out_dir``: ``soup.md`` (the side-by-side table) and ``soup.json``. The module's weights are
    put back afterwards."""
    check_choice("select", select, SOUP_SELECT)
    names = [n for n, _ in members]
    states = [dict(sd) for _, sd in members]
    check_same_architecture(states, names)
    loaders = split_loaders(dm)
    if "val" not in loaders:
        raise ArgumentError("select", select, f"needs a held-out val split; the run has {sorted(loaders)} (set "
                            "data.val_size > 0)")
    train = dm.train_dataloader() if has_batchnorm(module) else None
    mode = "max" if select.endswith("/acc") else "min"
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        evaluated = [evaluate_weights(module, sd, loaders, train, bn_batches) for sd in states]
        scores = [m[select] for m, _, _ in evaluated]

        def held_out(sd: dict[str, Tensor]) -> float:
            return evaluate_weights(module, sd, {"val": loaders["val"]}, train, bn_batches)[0][select]

        soup = greedy_soup(states, scores, held_out, mode=mode)
        greedy = evaluate_weights(module, soup.state_dict, loaders, train, bn_batches)[0]
        uniform = evaluate_weights(module, average_state_dicts(states), loaders, train, bn_batches)[0]
    finally:
        module.load_state_dict(saved)
    ensemble = _ensemble_metrics([lg for _, lg, _ in evaluated], evaluated[0][2], combine_method)
    best = soup.members[0]
    rows = [{"what": f"best member ({names[best]})", **evaluated[best][0]},
            {"what": f"uniform soup ({len(states)})", **uniform},
            {"what": f"greedy soup ({len(soup.members)} of {len(states)})", **greedy},
            {"what": f"prediction ensemble ({len(states)}, {combine_method})", **ensemble}]
    result = {"select": select, "rows": rows,
              "members": [{"name": n, **m} for n, (m, _, _) in zip(names, evaluated)],
              "greedy_members": [names[i] for i in soup.members],
              "greedy_trace": [{"member": names[i], "soup_score": s, "added": a} for i, s, a in soup.trace]}
    if out_dir is not None:
        out = Path(out_dir)
        columns = ["what", *[k for k in rows[0] if "/" in k]]
        atomic_write_bytes(markdown_table(rows, columns).encode(), out / "soup.md")
        atomic_write_bytes(json.dumps(result, indent=2).encode(), out / "soup.json")
    return result


def evaluate_run_soups(run_dir: str | Path, *, select: str = "val/acc", combine_method: str = "mean_prob",
                       bn_batches: int | None = None) -> dict[str, Any]:
    """:func:`soup_report` over one run's snapshot members (:func:`run_members`), its data and module rebuilt from
    its config; writes ``<run_dir>/soup/soup.md`` and ``soup.json``."""
    members = run_members(run_dir)
    _, dm, module = rebuild_run(run_dir)
    result = soup_report(members, module, dm, select=select, bn_batches=bn_batches, combine_method=combine_method,
                         out_dir=Path(run_dir) / "soup")
    return {"run_dir": str(run_dir), **result}
