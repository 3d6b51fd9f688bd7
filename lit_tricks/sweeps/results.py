"""The jobs of a sweep as the report reads them: every job directory's ``metrics.json`` and
``.hydra/overrides.yaml`` (hyperparameters, status, objective), the sweeper's search space (``multirun.yaml``,
``.hydra/hydra.yaml``) and cross-validation folds merged into one job.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lit_tricks.sweeps.ranges import SearchDim, parse_search_space

__all__ = ["NON_PARAMS", "JobResult", "aggregate_folds", "load_jobs", "read_yaml", "search_space", "sweeper_params",
           "varying_params"]

#: Overrides that select config files rather than hyperparameters (never report columns).
NON_PARAMS = ("hparams_search", "experiment", "hydra", "trainer", "logger", "callbacks", "paths", "resume")


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
    monitor: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.objective)


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


def read_yaml(path: Path) -> Any:
    """A YAML file as plain containers; None when it is missing or unreadable (a job killed while writing it)."""
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


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
        overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
        record: dict[str, Any] = {}
        metrics_path = job_dir / "metrics.json"
        if metrics_path.is_file():
            try:
                record = json.loads(metrics_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                record = {"status": "failed", "error": f"unreadable metrics.json: {err}"}
            if not isinstance(record, dict):
                record = {"status": "failed", "error": f"unreadable metrics.json: a {type(record).__name__}, "
                                                       "not a JSON object"}
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
            error=record.get("error"), best_ckpt=record.get("best_ckpt"), metrics=_dict(record.get("metrics")),
            monitor_mode=record.get("monitor_mode"), monitor=record.get("monitor"),
        ))
    return jobs


def sweeper_params(sweep_dir: Path, jobs: Sequence[JobResult]) -> tuple[dict[str, Any], Any]:
    """(hydra.sweeper.params plus sweep overrides of the command line, sweeper direction) of the sweep."""
    params: dict[str, Any] = {}
    direction: Any = None
    sources = [sweep_dir / "multirun.yaml"] + [j.dir / ".hydra" / "hydra.yaml" for j in jobs[:1]]
    for path in sources:
        data = read_yaml(path)
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
    params, _ = sweeper_params(Path(sweep_dir), jobs)
    try:
        dims = parse_search_space(params)
    except Exception:  # a sweeper syntax this Hydra cannot parse: fall back to the observed span
        dims = {}
    if jobs:  # a key no job had (a refused command's typo in multirun.yaml) is not a dimension of this sweep
        dims = {k: d for k, d in dims.items() if any(k in j.params for j in jobs)}
    for name in varying_params(jobs):
        if name in dims:
            continue
        values = [j.params[name] for j in jobs if name in j.params]
        nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) == len(values) and len(set(nums)) >= 2:
            lo, hi = min(nums), max(nums)
            dims[name] = SearchDim(name, lo, hi, log=lo > 0 and hi / lo >= 100.0)
    return dims


def varying_params(jobs: Sequence[JobResult]) -> list[str]:
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
