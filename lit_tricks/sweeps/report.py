"""Multirun reports: a table sorted by the objective, objective-vs-hyperparameter plots, border warnings, failed
jobs, and the narrowed ranges for the next coarse-to-fine stage as a ready Hydra override string.

Reads a Hydra multirun directory: every job directory with ``metrics.json`` (written by ``lit_tricks.run.train``:
objective, status, error, metrics, best_ckpt) and ``.hydra/overrides.yaml`` / ``.hydra/hydra.yaml`` (the job's
hyperparameters and the sweeper's search space).

About 400 lines: reading job directories, the table, the plots and the narrowed ranges are one report written
from one pass over the jobs; the range arithmetic itself lives in :mod:`lit_tricks.sweeps.ranges`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lit_tricks.sweeps.ranges import SearchDim, border_warnings, narrow_ranges, parse_search_space

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

#: Overrides that select config files rather than hyperparameters (never report columns).
NON_PARAMS = ("hparams_search", "experiment", "hydra", "trainer", "logger", "callbacks", "paths")


@dataclass
class JobResult:
    """One job of a sweep: its hyperparameters (from its overrides), status and objective."""

    num: int
    dir: Path
    params: dict[str, Any]
    status: str
    objective: float
    error: str | None = None
    best_ckpt: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    monitor_mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.objective)


@dataclass
class SweepReport:
    """Everything the report shows; :func:`write_report` renders it."""

    sweep_dir: Path
    direction: str
    jobs: list[JobResult]
    param_names: list[str]
    dims: dict[str, SearchDim]
    warnings: list[str]
    narrowed: dict[str, SearchDim]

    @property
    def ok_jobs(self) -> list[JobResult]:
        return [j for j in self.jobs if j.ok]

    @property
    def failed_jobs(self) -> list[JobResult]:
        return [j for j in self.jobs if not j.ok]

    @property
    def best(self) -> JobResult | None:
        ok = self.ok_jobs
        return ok[0] if ok else None

    def overrides(self) -> str:
        """The narrowed ranges as a ready Hydra command-line fragment (see :func:`narrowed_override_string`)."""
        return narrowed_override_string(self.narrowed)

    def markdown(self) -> str:
        """The report as markdown: summary, warnings, table sorted by the objective, failed jobs, next stage."""
        lines = [f"# Sweep report: {self.sweep_dir}", ""]
        best = self.best
        pruned = sum(j.status == "pruned" for j in self.jobs)
        lines.append(f"{len(self.jobs)} jobs, {len(self.ok_jobs)} ok, {len(self.failed_jobs) - pruned} failed"
                     + (f", {pruned} pruned" if pruned else "") + f"; objective {self.direction}d.")
        if best is not None:
            params = ", ".join(f"{k}={_fmt(best.params.get(k))}" for k in self.param_names)
            lines.append(f"Best: job {best.num}, objective {best.objective:.6g} ({params}).")
        lines.append("")
        if self.warnings:
            lines += [f"- {w}" for w in self.warnings] + [""]
        lines.append(_markdown_table(self._rows()))
        if self.failed_jobs:
            lines += ["", "## Failed jobs", ""]
            lines += [f"- job {j.num} ({j.dir.name}): {j.error or j.status}" for j in self.failed_jobs]
        if self.narrowed:
            lines += ["", "## Next stage (narrowed ranges)", "", "```", self.overrides(), "```"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """The table as CSV (same rows and order as the markdown table)."""
        rows = self._rows()
        buf = io.StringIO()
        writer = csv.writer(buf)
        for row in rows:
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


def _parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides -> {key: python value}; group selections and deletions are kept as strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params: dict[str, Any] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception:  # an override this Hydra cannot parse: keep the raw text
            key, _, raw = line.partition("=")
            params[key.lstrip("+~")] = raw
            continue
        if override.is_sweep_override() or override.is_delete():
            continue
        value = override.value()
        params[override.get_key_element().lstrip("+~")] = value
    return params


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / "metrics.json").is_file()
                                                               or (p / ".hydra" / "overrides.yaml").is_file())]

    def key(p: Path) -> tuple[int, str]:
        return (int(p.name), "") if p.name.isdigit() else (1 << 30, p.name)

    return sorted(dirs, key=key)


def load_jobs(sweep_dir: str | Path) -> list[JobResult]:
    """Every job of a multirun directory; a job without ``metrics.json`` is listed as failed (crashed or running)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir={str(sweep_dir)!r} is not a directory")
    jobs: list[JobResult] = []
    for i, job_dir in enumerate(_job_dirs(sweep_dir)):
        overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
        record: dict[str, Any] = {}
        metrics_path = job_dir / "metrics.json"
        if metrics_path.is_file():
            try:
                record = json.loads(metrics_path.read_text())
            except json.JSONDecodeError as err:
                record = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
        else:
            record = {"status": "missing", "error": "no metrics.json (the job crashed, was killed or is running)"}
        if overrides is None:
            overrides = record.get("overrides") or []
        objective = record.get("objective")
        try:
            value = float(objective) if objective is not None else math.nan
        except (TypeError, ValueError):
            value = math.nan
        status = str(record.get("status", "ok"))
        if status == "ok" and not math.isfinite(value):
            status, record["error"] = "failed", record.get("error") or f"objective is {objective!r}"
        jobs.append(JobResult(
            num=int(job_dir.name) if job_dir.name.isdigit() else i, dir=job_dir,
            params=_parse_overrides([str(o) for o in overrides]), status=status, objective=value,
            error=record.get("error"), best_ckpt=record.get("best_ckpt"), metrics=dict(record.get("metrics") or {}),
            monitor_mode=record.get("monitor_mode"),
        ))
    return jobs


def _sweeper_params(sweep_dir: Path, jobs: Sequence[JobResult]) -> tuple[dict[str, Any], Any]:
    """(hydra.sweeper.params plus sweep overrides of the command line, sweeper direction) of the sweep."""
    params: dict[str, Any] = {}
    direction: Any = None
    sources = [sweep_dir / "multirun.yaml"] + [j.dir / ".hydra" / "hydra.yaml" for j in jobs[:1]]
    for path in sources:
        data = _read_yaml(path)
        if not isinstance(data, dict):
            continue
        hydra = data.get("hydra", {}) or {}
        sweeper = hydra.get("sweeper", {}) or {}
        params.update({str(k): v for k, v in (sweeper.get("params") or {}).items()})
        direction = direction or sweeper.get("direction")
        if path.name == "multirun.yaml":  # the basic sweeper's command-line sweeps (lr=0.1,0.3)
            for line in (hydra.get("overrides", {}) or {}).get("task", []) or []:
                key, sep, value = str(line).partition("=")
                if sep and ("," in value or "(" in value):
                    params.setdefault(key.lstrip("+"), value)
    return params, direction


def search_space(sweep_dir: str | Path, jobs: Sequence[JobResult]) -> dict[str, SearchDim]:
    """The sweep's search space: the sweeper's params, else the observed span of every hyperparameter that varies.

    An observed positive span over two decades or more is taken as log-sampled.
    """
    params, _ = _sweeper_params(Path(sweep_dir), jobs)
    try:
        dims = parse_search_space(params)
    except Exception:  # a sweeper syntax this Hydra cannot parse: fall back to the observed span
        dims = {}
    for name in _varying_params(jobs):
        if name in dims:
            continue
        values = [j.params[name] for j in jobs if name in j.params]
        nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) == len(values) and len(set(nums)) >= 2:
            lo, hi = min(nums), max(nums)
            dims[name] = SearchDim(name, lo, hi, log=lo > 0 and hi / lo >= 100.0)
    return dims


def _varying_params(jobs: Sequence[JobResult]) -> list[str]:
    names: list[str] = []
    for job in jobs:
        for name in job.params:
            if name not in names and name.split(".")[0].split("/")[0] not in NON_PARAMS:
                names.append(name)
    return [n for n in names if len({repr(j.params.get(n)) for j in jobs}) > 1]


def aggregate_folds(jobs: Sequence[JobResult], fold_key: str = "data.fold") -> list[JobResult]:
    """Merge jobs that differ only in ``fold_key`` (a ``data.fold=range(5)`` sweep): objective = mean over folds.

    The merged job keeps the first fold's number and directory; ``metrics`` gets ``objective_std`` and ``folds``.
    A group with a failed fold is failed. Jobs without ``fold_key`` are returned unchanged.
    """
    groups: dict[str, list[JobResult]] = {}
    for job in jobs:
        key = json.dumps({k: repr(v) for k, v in sorted(job.params.items()) if k != fold_key})
        groups.setdefault(key if fold_key in job.params else f"__single__{job.num}", []).append(job)
    merged: list[JobResult] = []
    for members in groups.values():
        if len(members) == 1 and fold_key not in members[0].params:
            merged.append(members[0])
            continue
        first = members[0]
        params = {k: v for k, v in first.params.items() if k != fold_key}
        failed = [m for m in members if not m.ok]
        values = [m.objective for m in members]
        metrics = {"folds": len(members), "objective_std": statistics.pstdev(values) if not failed else math.nan}
        if failed:
            error = f"{len(failed)}/{len(members)} folds failed: " + (failed[0].error or failed[0].status)
            merged.append(replace(first, params=params, status="failed", objective=math.nan, error=error,
                                  metrics=metrics))
        else:
            merged.append(replace(first, params=params, objective=statistics.fmean(values), metrics=metrics,
                                  best_ckpt=[m.best_ckpt for m in members]))
    return merged


def _monitor_mode(jobs: Sequence[JobResult]) -> str | None:
    """``monitor_mode`` of the sweep's jobs (their metrics.json, else their .hydra/config.yaml)."""
    for job in jobs:
        mode = job.monitor_mode
        if mode is None:
            cfg = _read_yaml(job.dir / ".hydra" / "config.yaml")
            mode = cfg.get("monitor_mode") if isinstance(cfg, dict) else None
        if mode in ("min", "max"):
            return str(mode)
    return None


def _direction(sweep_dir: Path, jobs: Sequence[JobResult]) -> tuple[str, str | None]:
    """(how to rank: the jobs' ``monitor_mode``, else the sweeper's direction; a warning when the two disagree)."""
    _, direction = _sweeper_params(sweep_dir, jobs)
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


def build_report(sweep_dir: str | Path, *, top_fraction: float = 0.25, min_top: int = 2, edge: float = 0.1,
                 fold_key: str | None = "data.fold") -> SweepReport:
    """Read a multirun directory and compute the report.

    top_fraction / min_top: the best jobs whose values span the narrowed ranges (at least ``min_top`` of them).
    edge: fraction of a range (log scale where log-sampled) counted as its border for the warning.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if (sweep_dir / "optuna_study.json").is_file():  # a lit_optuna sweep: its study knows pruned and lost trials
        from lit_tricks.sweeps.study import merge_study_trials

        jobs = merge_study_trials(sweep_dir, jobs, JobResult)
    dims = search_space(sweep_dir, jobs)
    direction, direction_warning = _direction(sweep_dir, jobs)
    if fold_key is not None and any(fold_key in j.params for j in jobs):
        jobs = aggregate_folds(jobs, fold_key)
        dims.pop(fold_key, None)
    sign = -1.0 if direction == "maximize" else 1.0
    ok = sorted((j for j in jobs if j.ok), key=lambda j: (sign * j.objective, j.num))
    failed = sorted((j for j in jobs if not j.ok), key=lambda j: j.num)
    names = list(dims) + [n for n in _varying_params(jobs) if n not in dims and n != fold_key]
    warnings: list[str] = []
    narrowed: dict[str, SearchDim] = {}
    if ok:
        warnings = border_warnings(dims, ok[0].params, edge=edge)
        top = ok[: max(min_top, math.ceil(top_fraction * len(ok)))]
        narrowed = narrow_ranges(dims, [j.params for j in top])
    if direction_warning:
        warnings.insert(0, direction_warning)
    if failed:
        warnings.append(f"WARNING: {len(failed)} of {len(jobs)} jobs failed (listed below); they are not ranked")
    return SweepReport(sweep_dir, direction, ok + failed, names, dims, warnings, narrowed)


def narrowed_override_string(dims: Mapping[str, SearchDim]) -> str:
    """One shell-quoted Hydra override setting ``hydra.sweeper.params`` to the given ranges.

    e.g. ``"hydra.sweeper.params={optimizer.lr:'tag(log, interval(0.001, 0.1))'}"``: pass it after
    ``-m hparams_search=fine``. (A dict, because the keys contain dots; recorded in each job's
    ``.hydra/hydra.yaml``, so the next stage's report knows its ranges.)
    """
    if not dims:
        return ""
    items = []
    for dim in dims.values():
        name, _, value = dim.to_override().partition("=")
        items.append(f"{name}:'{value}'")
    return '"hydra.sweeper.params={' + ",".join(items) + '}"'


def _plot(report: SweepReport, path: Path) -> Path | None:
    names = [n for n in report.param_names if any(isinstance(j.params.get(n), int | float) for j in report.jobs)]
    if not names:
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
