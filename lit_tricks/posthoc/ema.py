"""Post-hoc EMA from :class:`~lit_tricks.callbacks.PostHocEMA` snapshots: synthesize EMAs of the requested lengths
(EDM2's least-squares solve, float64), score each on the validation and test splits (BatchNorm recalibrated), write
a table and a plot of score vs length, export the best as a checkpoint the run's module loads."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.callbacks.posthoc_ema import SNAPSHOT_FORMAT, PostHocEMA, list_snapshots
from lit_tricks.fault.atomic import atomic_save_figure, atomic_torch_save, atomic_write_bytes
from lit_tricks.functional.posthoc_ema import (
    SIGMA_REL_MAX,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
    synthesize,
)
from lit_tricks.posthoc.evaluate import EVAL_SPLITS, evaluate_weights, has_batchnorm, markdown_table, split_loaders
from lit_tricks.validation import ArgumentError, check_choice, check_number

__all__ = ["PostHocEMAEvaluation", "find_snapshot_dir", "load_snapshot", "posthoc_ema_report",
           "reconstruct_posthoc_ema", "selection_key"]

log = logging.getLogger(__name__)

#: ``--select`` values: a split's accuracy (higher is better) or NLL (lower is better).
SELECT = tuple(f"{s}/{m}" for s in EVAL_SPLITS for m in ("acc", "nll"))


def load_snapshot(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """One snapshot file (``weights_only=True``); a file of another format is refused in one line."""
    snap = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{path}: not a PostHocEMA snapshot (format {SNAPSHOT_FORMAT!r})")
    return snap


def find_snapshot_dir(run_dir: str | Path) -> Path:
    """The one folder under ``run_dir`` (``run_dir`` itself included) that holds PostHocEMA snapshots."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no such directory")
    found = sorted({p.parent for p in root.rglob("posthoc-ema-*.pt") if list_snapshots(p.parent)})
    if not found:
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no PostHocEMA snapshots (posthoc-ema-*.pt) under it")
    if len(found) > 1:
        raise ValueError(f"run_dir={str(run_dir)!r}: snapshots in {len(found)} folders "
                         f"({', '.join(str(f) for f in found[:3])}); pass one of them")
    return found[0]


def _targets(sigma_rels: Sequence[float] | None, gammas: Sequence[float] | None) -> list[float]:
    if (sigma_rels is None) == (gammas is None):
        raise ArgumentError("sigma_rels", sigma_rels, "or gammas must be given (one of them)")
    if gammas is not None:
        return [check_number("gammas", g, 0.0) for g in gammas]
    assert sigma_rels is not None
    return [sigma_rel_to_gamma(check_number("sigma_rels", s, 0.0, SIGMA_REL_MAX, lo_open=True, hi_open=False))
            for s in sigma_rels]


def reconstruct_posthoc_ema(snapshot_dir: str | Path, sigma_rels: Sequence[float] | None = None, *,
                            gammas: Sequence[float] | None = None, step: int | None = None,
                            normalize: bool = True) -> list[dict[str, Tensor]]:
    """The EMA of each requested length at optimizer step ``step`` (default: the last snapshot's), synthesized from
    the snapshots of ``snapshot_dir`` up to that step: parameters as ``sum_i X_i snapshot_i`` with EDM2's float64
    least-squares coefficients (:func:`~lit_tricks.functional.posthoc_ema.solve_posthoc_coefficients`), buffers
    copied from the snapshot of ``step``. Each result is a ``{state_dict key: tensor}`` of the model."""
    out_gammas = _targets(sigma_rels, gammas)
    files = list_snapshots(snapshot_dir)
    if not files:
        raise FileNotFoundError(f"snapshot_dir={str(snapshot_dir)!r}: no PostHocEMA snapshots")
    step = files[-1][0] if step is None else step
    if step not in {s for s, _ in files}:
        raise ArgumentError("step", step, f"must be the step of a snapshot ({[s for s, _ in files][-5:]} ...)")
    files = [(s, p) for s, p in files if 0 < s <= step]
    metas = [load_snapshot(p, mmap=True) for _, p in files]
    in_steps = [float(m["step"]) for m in metas for _ in m["gammas"]]
    in_gammas = [float(g) for m in metas for g in m["gammas"]]
    coefficients = solve_posthoc_coefficients(in_steps, in_gammas, [float(step)] * len(out_gammas), out_gammas,
                                              normalize=normalize)

    def inputs() -> Iterator[Mapping[str, Tensor]]:
        for _, path in files:  # one file in memory at a time
            yield from load_snapshot(path)["ema"]

    buffers = metas[-1]["buffers"]
    return [{**params, **{k: v.clone() for k, v in buffers.items()}} for params in synthesize(inputs(), coefficients)]


def selection_key(scores: Mapping[str, float], select: str) -> tuple[float, float]:
    """Larger is better: ``select`` (a split's acc, or its nll negated), then the split's other score for ties
    (accuracy on a few hundred samples ties often); NaN ranks last. The report keeps the first of equal keys."""
    split, metric = select.split("/")

    def up(key: str) -> float:
        value = float(scores[key]) if key.endswith("/acc") else -float(scores[key])
        return -math.inf if math.isnan(value) else value

    return up(select), up(f"{split}/{'nll' if metric == 'acc' else 'acc'}")


def _plot(rows: list[dict[str, Any]], reference: dict[str, Any] | None, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("posthoc_ema: matplotlib is not installed (the plots extra); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in sorted({k for r in rows for k in r if k.endswith("/acc")}):
        ax.plot([r["sigma_rel"] for r in rows], [r[key] for r in rows], marker="o", label=key)
        if reference is not None and key in reference:
            ax.axhline(reference[key], linestyle="--", linewidth=1, color=ax.lines[-1].get_color(),
                       label=f"{key} ({reference['name']})")
    ax.set_xscale("log")
    ax.set_xlabel("EMA length sigma_rel")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def posthoc_ema_report(snapshot_dir: str | Path, module: nn.Module, dm: Any, sigma_rels: Sequence[float],
                       out_dir: str | Path, *, select: str | None = "val/acc", step: int | None = None,
                       bn_batches: int | None = None, reference: Mapping[str, Tensor] | None = None,
                       reference_name: str = "final weights") -> dict[str, Any]:
    """Synthesize, score and compare the EMAs of ``sigma_rels``; the best by ``select`` (a split's acc or nll; ties
    broken by the other, :func:`selection_key`) is exported as ``<out_dir>/posthoc-ema-best.ckpt`` (``select=None``:
    none chosen, none exported). Writes ``posthoc_ema.json``, ``posthoc_ema.md`` and ``posthoc_ema.png`` into
    ``out_dir``; ``reference`` (e.g. the run's final weights) is scored the same way. The module's own weights are
    put back afterwards. Returns the rows, the best and the files."""
    loaders = split_loaders(dm)
    if select is not None and check_choice("select", select, SELECT).split("/")[0] not in loaders:
        raise ArgumentError("select", select, f"needs a {select.split('/')[0]} split; the run has {sorted(loaders)}"
                            " (a validation split: data.val_size > 0)")
    train = dm.train_dataloader() if has_batchnorm(module) else None
    sigma_rels = sorted(float(s) for s in sigma_rels)
    states = reconstruct_posthoc_ema(snapshot_dir, sigma_rels, step=step)
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    rows: list[dict[str, Any]] = []
    ref_row: dict[str, Any] | None = None
    best: tuple[tuple[float, float], dict[str, Any], dict[str, Tensor]] | None = None
    try:
        for sigma_rel, state in zip(sigma_rels, states):
            metrics, _, _ = evaluate_weights(module, state, loaders, train, bn_batches)
            row = {"sigma_rel": sigma_rel, "gamma": sigma_rel_to_gamma(sigma_rel), **metrics}
            rows.append(row)
            if select is not None and (best is None or selection_key(metrics, select) > best[0]):
                best = (selection_key(metrics, select), row, {k: v.detach().clone() for k, v in
                                                              module.state_dict().items()})
        if reference is not None:
            ref_row = {"name": reference_name, **evaluate_weights(module, reference, loaders, train, bn_batches)[0]}
    finally:
        module.load_state_dict(saved)
    out = Path(out_dir)
    snapshots = list_snapshots(snapshot_dir)
    checkpoint = None
    if best is not None:
        info = {"sigma_rel": best[1]["sigma_rel"], "gamma": best[1]["gamma"], "select": select,
                "step": step if step is not None else snapshots[-1][0], "snapshot_dir": str(snapshot_dir)}
        ckpt = {"state_dict": best[2], "hyper_parameters": dict(getattr(module, "hparams", {}) or {}),
                "pytorch-lightning_version": _lightning_version(), "lit_tricks_posthoc_ema": info}
        checkpoint = out / "posthoc-ema-best.ckpt"
        atomic_torch_save(ckpt, checkpoint)
    columns = ["sigma_rel", "gamma", *[k for k in rows[0] if "/" in k]]
    table = markdown_table(rows + ([{"sigma_rel": ref_row["name"], **ref_row}] if ref_row else []), columns)
    atomic_write_bytes(table.encode(), out / "posthoc_ema.md")
    plot = _plot(rows, ref_row, out / "posthoc_ema.png")
    result = {"snapshot_dir": str(snapshot_dir), "snapshots": len(snapshots), "select": select, "rows": rows,
              "reference": ref_row, "best": best[1] if best else None,
              "checkpoint": str(checkpoint) if checkpoint else None,
              "table": str(out / "posthoc_ema.md"), "plot": str(plot) if plot else None}
    atomic_write_bytes(json.dumps(result, indent=2).encode(), out / "posthoc_ema.json")
    return result


def _lightning_version() -> str:
    import lightning

    return str(lightning.__version__)


class PostHocEMAEvaluation:
    """The end-of-run post-hoc EMA of a lit_tricks run (``conf/callbacks/posthoc_ema.yaml`` sets the root node
    ``posthoc_ema`` to it; :mod:`lit_tricks.run` builds it at start, which checks the arguments, and calls it after
    the test): :func:`posthoc_ema_report` over the run's PostHocEMA snapshots into ``<run dir>/posthoc_ema``, with
    the module's weights at the end of the run as the reference row. Returns ``posthoc_ema/...`` metrics for
    ``metrics.json``. Without the ``select`` split the table is written, nothing is chosen, a warning says so."""

    def __init__(self, sigma_rels: Sequence[float] = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2), *,
                 select: str = "val/acc", bn_batches: int | None = None) -> None:
        owner = "posthoc_ema"
        if not list(sigma_rels):
            raise ArgumentError("sigma_rels", list(sigma_rels), "must hold at least one value", owner)
        for s in sigma_rels:
            check_number("sigma_rels", s, 0.0, SIGMA_REL_MAX, lo_open=True, hi_open=False, owner=owner)
        check_choice("select", select, SELECT, owner)
        if bn_batches is not None:
            check_number("bn_batches", bn_batches, 1, integer=True, owner=owner)
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.select = select
        self.bn_batches = bn_batches

    def __call__(self, trainer: Any, module: nn.Module, dm: Any, out_dir: str | Path) -> dict[str, float]:
        found = [c.snapshot_dir for c in trainer.callbacks if isinstance(c, PostHocEMA) and c.snapshot_dir is not None]
        if not found:
            raise ValueError("posthoc_ema: no PostHocEMA callback wrote snapshots in this run; add it with "
                             "callbacks=[<preset>,posthoc_ema]")
        select: str | None = self.select
        if self.select.split("/")[0] not in split_loaders(dm):
            log.warning("posthoc_ema: no %s split to select on; the table is written, no EMA is chosen "
                        "(use data.val_size > 0)", self.select.split("/")[0])
            select = None
        reference = {k: v.detach().clone() for k, v in module.state_dict().items()}
        result = posthoc_ema_report(found[0], module, dm, self.sigma_rels, out_dir, select=select,
                                    bn_batches=self.bn_batches, reference=reference)
        metrics = {f"posthoc_ema/final/{k}": v for k, v in (result["reference"] or {}).items() if "/" in k}
        if result["best"] is not None:
            best = result["best"]
            metrics.update({f"posthoc_ema/{k}": v for k, v in best.items() if "/" in k})
            metrics["posthoc_ema/sigma_rel"] = best["sigma_rel"]
        metrics.update({f"posthoc_ema/sigma_rel={r['sigma_rel']:g}/{k}": v for r in result["rows"]
                        for k, v in r.items() if "/" in k})
        return metrics
