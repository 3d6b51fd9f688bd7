"""``sigma_rel`` as a free hyperparameter of a sweep: a job whose run chose its EMA length after training
(``callbacks=[...,posthoc_ema]``: :class:`~lit_tricks.posthoc.ema.PostHocEMAEvaluation` writes
``posthoc_ema/sigma_rel=<s>/<split>/<acc|nll>`` into its ``metrics.json``) is ranked once per length.

Each such job keeps its own row (the weights the run evaluated: ``posthoc_ema.sigma_rel`` empty) and gains one row per
reconstructed length ``s``: the job's hyperparameters plus ``posthoc_ema.sigma_rel=s``, objective
``posthoc_ema/sigma_rel=<s>/<monitor>`` (the job's own monitor, so the rows rank on one scale; a monitor the post-hoc
evaluation does not score, such as ``val/loss``, makes no rows, and the report says so in one line). The row of the
length the run exported names its ``posthoc-ema-best.ckpt``. Ranges are narrowed on each job's best row
(:func:`best_row_per_job`), so the lengths of one job never count as evidence of several jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace

from lit_tricks.sweeps.results import JobResult

__all__ = ["SIGMA_REL", "best_row_per_job", "sigma_rel_rows"]

#: The report column of the post-hoc EMA length.
SIGMA_REL = "posthoc_ema.sigma_rel"
_KEY = re.compile(r"posthoc_ema/sigma_rel=([^/]+)/(.+)")


def _lengths(job: JobResult) -> dict[float, dict[str, float]]:
    """``{sigma_rel: {metric: value}}`` of a job's post-hoc EMA scores."""
    out: dict[float, dict[str, float]] = {}
    for key, value in job.metrics.items():
        if (m := _KEY.fullmatch(key)) is not None:
            try:
                out.setdefault(float(m.group(1)), {})[m.group(2)] = float(value)
            except (TypeError, ValueError):
                continue
    return out


def _row(job: JobResult, sigma_rel: float, value: float) -> JobResult:
    best = job.dir / "posthoc_ema" / "posthoc-ema-best.ckpt"
    chosen = job.metrics.get("posthoc_ema/sigma_rel") == sigma_rel and best.is_file()
    return replace(job, params={**job.params, SIGMA_REL: sigma_rel}, objective=value,
                   best_ckpt=str(best) if chosen else None)


def sigma_rel_rows(jobs: Sequence[JobResult]) -> tuple[list[JobResult], str | None]:
    """``jobs`` with one more row per post-hoc EMA length for every ok job that has them (see module doc), and a
    one-line note for the report (None when no job has post-hoc EMA scores)."""
    out: list[JobResult] = []
    expanded, lengths, missing, non_finite = 0, set[float](), set[str](), 0
    for job in jobs:
        out.append(job)
        scores = _lengths(job) if job.ok else {}
        if not scores:
            continue
        monitor = job.monitor or ""
        if any(monitor not in row for row in scores.values()):
            missing.add(monitor or "(unknown)")
            continue
        expanded += 1
        lengths.update(scores)
        finite = {s: row[monitor] for s, row in sorted(scores.items()) if math.isfinite(row[monitor])}
        non_finite += len(scores) - len(finite)  # a length that diverged is no failed job: the job's own row stands
        out += [_row(job, s, value) for s, value in finite.items()]
    if not expanded and not missing:
        return out, None
    note = ""
    if expanded:
        note = (f"sigma_rel as a hyperparameter: {expanded} job(s) ranked once per post-hoc EMA length "
                f"({', '.join(f'{s:g}' for s in sorted(lengths))}; column {SIGMA_REL}, empty: the run's own weights); "
                "ranges narrowed on each job's best row.")
        if non_finite:
            note += f" {non_finite} (job, length) score(s) not finite, left out."
    if missing:
        note += (f"{' ' if note else ''}No sigma_rel rows for jobs monitoring {', '.join(sorted(missing))}: the "
                 "post-hoc EMA scores acc and nll only (monitor e.g. val/acc or val/nll).")
    return out, note


def best_row_per_job(ranked: Sequence[JobResult]) -> list[JobResult]:
    """The first (best) row of each job number in ``ranked`` (rows sorted best first), in that order."""
    seen: set[int] = set()
    out = []
    for job in ranked:
        if job.num not in seen:
            seen.add(job.num)
            out.append(job)
    return out
