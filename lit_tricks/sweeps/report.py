"""Multirun reports: a table sorted by the objective, objective-vs-hyperparameter plots, border warnings, the jobs
that were not ranked (failed, pruned, continued, running) with their reasons, and the narrowed ranges for the next
coarse-to-fine stage as a ready Hydra override string, when the evidence supports them.

Reads a Hydra multirun directory through :mod:`lit_tricks.sweeps.results` (each job's ``metrics.json`` and
overrides, the sweeper's search space); a ``lit_optuna`` sweep's study adds what the directories cannot know
(pruned, lost and continued trials). The range arithmetic lives in :mod:`lit_tricks.sweeps.ranges`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_tricks.sweeps.posthoc_rows import best_row_per_job, sigma_rel_rows
from lit_tricks.sweeps.ranges import SearchDim, border_warnings, narrow_ranges, narrowed_override_string
from lit_tricks.sweeps.results import (
    JobResult,
    aggregate_folds,
    load_jobs,
    read_yaml,
    search_space,
    sweeper_params,
    varying_params,
)

__all__ = [
    "JobResult",
    "SweepReport",
    "aggregate_folds",
    "build_report",
    "load_jobs",
    "narrowed_override_string",
    "search_space",
    "write_report",
]

#: Statuses of jobs that are neither ranked nor failed: the sweeper stopped them early, a later trial continues
#: their work from their checkpoint, or they still run.
NOT_FAILED = ("pruned", "continued", "running", "waiting")


@dataclass
class SweepReport:
    """Everything the report shows; :func:`write_report` renders it. ``evidence``: why no range was narrowed."""

    sweep_dir: Path
    direction: str
    jobs: list[JobResult]
    param_names: list[str]
    dims: dict[str, SearchDim]
    warnings: list[str]
    narrowed: dict[str, SearchDim]
    evidence: str = ""

    @property
    def ok_jobs(self) -> list[JobResult]:
        return [j for j in self.jobs if j.ok]

    @property
    def failed_jobs(self) -> list[JobResult]:
        """Jobs that failed (raised, a non-finite objective, or died without a record)."""
        return [j for j in self.jobs if not j.ok and j.status not in NOT_FAILED]

    @property
    def unranked_jobs(self) -> list[JobResult]:
        """Every job that is not ranked: failed, pruned, continued or still running."""
        return [j for j in self.jobs if not j.ok]

    @property
    def best(self) -> JobResult | None:
        ok = self.ok_jobs
        return ok[0] if ok else None

    def overrides(self) -> str:
        """The narrowed ranges as a ready Hydra command-line fragment (see :func:`narrowed_override_string`)."""
        return narrowed_override_string(self.narrowed)

    def markdown(self) -> str:
        """The report as markdown: summary, warnings, table sorted by the objective, unranked jobs, next stage."""
        lines = [f"# Sweep report: {self.sweep_dir}", ""]
        counts = [f"{len({j.num for j in self.ok_jobs})} ok", f"{len({j.num for j in self.failed_jobs})} failed"]
        counts += [f"{n} {s}" for s in NOT_FAILED if (n := sum(j.status == s for j in self.jobs))]
        lines.append(f"{len({j.num for j in self.jobs})} jobs: {', '.join(counts)}; objective {self.direction}d.")
        best = self.best
        if best is not None:
            params = ", ".join(f"{k}={_fmt(best.params.get(k))}" for k in self.param_names)
            lines.append(f"Best: job {best.num}, objective {best.objective:.6g} ({params}).")
        lines.append("")
        if self.warnings:
            lines += [f"- {w}" for w in self.warnings] + [""]
        lines.append(_markdown_table(self._rows()))
        if self.unranked_jobs:
            lines += ["", "## Jobs not ranked", ""]
            lines += [f"- job {j.num} ({j.status}): {j.error or j.status}" for j in self.unranked_jobs]
        lines += ["", "## Next stage (narrowed ranges)", ""]
        if self.narrowed:
            lines += ["```", self.overrides(), "```"]
        else:
            lines.append(self.evidence or "No range to narrow.")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV (same rows and order as the markdown table)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        for row in self._rows():
            writer.writerow(row)
        return buf.getvalue()

    def _rows(self) -> list[list[str]]:
        header = ["rank", "job", "status", "objective", *self.param_names, "error"]
        rows = [header]
        for i, job in enumerate(self.jobs, start=1):
            objective = f"{job.objective:.6g}" if math.isfinite(job.objective) else "nan"
            rows.append([str(i) if job.ok else "-", str(job.num), job.status, objective,
                         *[_fmt(job.params.get(k)) for k in self.param_names], job.error or ""])
        return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(out)


def _monitor_mode(jobs: Sequence[JobResult]) -> str | None:
    """``monitor_mode`` of the sweep's jobs (their metrics.json, else their .hydra/config.yaml)."""
    for job in jobs:
        mode = job.monitor_mode
        if mode is None:
            cfg = read_yaml(job.dir / ".hydra" / "config.yaml")
            mode = cfg.get("monitor_mode") if isinstance(cfg, dict) else None
        if mode in ("min", "max"):
            return str(mode)
    return None


def _direction(sweep_dir: Path, jobs: Sequence[JobResult]) -> tuple[str, str | None]:
    """(how to rank: the jobs' ``monitor_mode``, else the sweeper's direction; a warning when the two disagree)."""
    _, direction = sweeper_params(sweep_dir, jobs)
    if isinstance(direction, list) and direction:
        direction = direction[0]
    mode = _monitor_mode(jobs)
    if mode is not None:
        ranked = "maximize" if mode == "max" else "minimize"
        warning = None
        if direction in ("maximize", "minimize") and direction != ranked:
            warning = (f"WARNING: the sweeper's direction was {direction} but monitor_mode={mode}: its sampler "
                       f"optimized the wrong way; ranked by monitor_mode ({ranked})")
        return ranked, warning
    if direction in ("maximize", "minimize"):
        return str(direction), None
    return "maximize", None


def _narrowed(dims: Mapping[str, SearchDim], ok: Sequence[JobResult], top_fraction: float, min_top: int,
              jobs_per_dim: int) -> tuple[dict[str, SearchDim], str]:
    """(ranges the best jobs support, or {} and the reason). Only ranges that shrink are proposed."""
    needed = jobs_per_dim * max(1, len(dims))
    if len(ok) < needed:
        return {}, (f"Too little evidence to narrow: {len(ok)} ranked job(s) for {len(dims)} searched "
                    f"hyperparameter(s); narrowing needs at least {needed} ({jobs_per_dim} per hyperparameter). "
                    "Run more trials (hydra.sweeper.n_trials) first.")
    top = ok[: max(min_top, math.ceil(top_fraction * len(ok)))]
    narrowed = {k: d for k, d in narrow_ranges(dims, [j.params for j in top]).items() if d != dims[k]}
    if not narrowed:
        return {}, (f"No narrower range follows from the best {len(top)} of {len(ok)} ranked jobs: they spread "
                    "over the whole searched space.")
    return narrowed, ""


def build_report(sweep_dir: str | Path, *, top_fraction: float = 0.25, min_top: int = 2, edge: float = 0.1,
                 fold_key: str | None = "data.fold", jobs_per_dim: int = 5, sigma_rel: bool = True) -> SweepReport:
    """Read a multirun directory and compute the report.

    sigma_rel: rank jobs with post-hoc EMA scores once per EMA length too (:mod:`lit_tricks.sweeps.posthoc_rows`).
    top_fraction / min_top: the best jobs whose values span the narrowed ranges (at least ``min_top`` of them).
    edge: fraction of a range (log scale where log-sampled) counted as its border for the warning.
    jobs_per_dim: ranked jobs needed per searched hyperparameter before any range is narrowed.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    if not 0.0 <= edge < 0.5:
        raise ValueError(f"edge must be in [0, 0.5), got {edge!r}")
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if (sweep_dir / "optuna_study.json").is_file():  # a lit_optuna sweep: its study knows pruned and lost trials
        from lit_tricks.sweeps.trials import merge_study_trials

        jobs = merge_study_trials(sweep_dir, jobs, JobResult)
    dims = search_space(sweep_dir, jobs)
    direction, direction_warning = _direction(sweep_dir, jobs)
    if fold_key is not None and any(fold_key in j.params for j in jobs):
        jobs = aggregate_folds(jobs, fold_key)
        dims.pop(fold_key, None)
    jobs, sigma_rel_note = sigma_rel_rows(jobs) if sigma_rel else (jobs, None)
    sign = -1.0 if direction == "maximize" else 1.0
    ok = sorted((j for j in jobs if j.ok), key=lambda j: (sign * j.objective, j.num))
    unranked = sorted((j for j in jobs if not j.ok), key=lambda j: j.num)
    names = list(dims) + [n for n in varying_params(jobs) if n not in dims and n != fold_key]
    warnings: list[str] = []
    narrowed: dict[str, SearchDim] = {}
    evidence = "No job finished ok: nothing to rank or narrow."
    if ok:
        warnings = border_warnings(dims, ok[0].params, edge=edge)
        narrowed, evidence = _narrowed(dims, best_row_per_job(ok), top_fraction, min_top, jobs_per_dim)
    warnings += [sigma_rel_note] if sigma_rel_note else []
    if direction_warning:
        warnings.insert(0, direction_warning)
    report = SweepReport(sweep_dir, direction, ok + unranked, names, dims, warnings, narrowed, evidence)
    if report.failed_jobs:
        warnings.append(f"WARNING: {len(report.failed_jobs)} of {len(jobs)} jobs failed (listed below); they are "
                        "not ranked")
    return report


def _plot(report: SweepReport, path: Path) -> Path | None:
    import importlib.util

    names = [n for n in report.param_names if any(isinstance(j.params.get(n), int | float) for j in report.jobs)]
    if not names or importlib.util.find_spec("matplotlib") is None:  # no plots extra: the report without its plot
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    ok = report.ok_jobs
    best = report.best
    for ax, name in zip(axes[0], names):
        xs = [float(j.params[name]) for j in ok if isinstance(j.params.get(name), int | float)]
        ys = [j.objective for j in ok if isinstance(j.params.get(name), int | float)]
        ax.scatter(xs, ys, s=18, label="ok")
        bad = [float(j.params[name]) for j in report.failed_jobs if isinstance(j.params.get(name), int | float)]
        if bad and ys:
            ax.scatter(bad, [min(ys)] * len(bad), marker="x", color="red", label="failed")
        if best is not None and isinstance(best.params.get(name), int | float):
            ax.scatter([float(best.params[name])], [best.objective], s=80, facecolors="none", edgecolors="black",
                       label="best")
        dim = report.dims.get(name)
        if dim is not None and dim.log:
            ax.set_xscale("log")
        bounds = dim.numeric_bounds() if dim is not None else None
        if bounds is not None:
            for b in bounds:
                ax.axvline(b, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(name + (" (log)" if dim is not None and dim.log else ""))
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{report.sweep_dir.name}: objective ({report.direction}) vs hyperparameters")
    fig.tight_layout()
    from lit_tricks.fault.atomic import atomic_save_figure

    atomic_save_figure(fig, path, dpi=100)  # closes the figure
    return path


def write_report(report: SweepReport, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``objective.png`` (default: into the sweep directory)."""
    from lit_tricks.fault.atomic import atomic_write_bytes

    out = Path(out_dir) if out_dir is not None else report.sweep_dir
    paths = {"markdown": out / "report.md", "csv": out / "report.csv"}
    atomic_write_bytes(report.markdown().encode(), paths["markdown"])
    atomic_write_bytes(report.csv().encode(), paths["csv"])
    png = _plot(report, out / "objective.png")
    if png is not None:
        paths["plot"] = png
    return paths
