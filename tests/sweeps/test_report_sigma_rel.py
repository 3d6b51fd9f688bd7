"""The sweep report treats the post-hoc EMA length as a hyperparameter: a job whose metrics.json holds
``posthoc_ema/sigma_rel=<s>/<monitor>`` (written by PostHocEMAEvaluation at the end of a run) is ranked once per
length beside its own row; the ranking equals a hand-made sort of every (job, length) score, ranges are narrowed
on jobs (not rows), and a monitor the post-hoc evaluation does not score is said in one line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lit_tricks.cli.report import main
from lit_tricks.sweeps.posthoc_rows import SIGMA_REL
from lit_tricks.sweeps.report import build_report

LENGTHS = (0.05, 0.1, 0.2)


def _job(sweep: Path, num: int, lr: float, own: float, posthoc: dict[float, float] | None,
         monitor: str = "val/acc", chosen: float | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
    hydra = {"hydra": {"sweeper": {"direction": "maximize", "params": {"optimizer.lr": "interval(0.001, 1.0)"}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    metrics: dict[str, float] = {monitor: own}
    for s, v in (posthoc or {}).items():  # the keys PostHocEMAEvaluation writes
        metrics.update({f"posthoc_ema/sigma_rel={s:g}/val/acc": v, f"posthoc_ema/sigma_rel={s:g}/val/nll": 1 - v})
    if chosen is not None:
        metrics["posthoc_ema/sigma_rel"] = chosen
        (job / "posthoc_ema").mkdir()
        (job / "posthoc_ema" / "posthoc-ema-best.ckpt").write_bytes(b"")
    record = {"objective": own, "status": "ok", "monitor": monitor, "monitor_mode": "max", "metrics": metrics,
              "best_ckpt": ""}
    (job / "metrics.json").write_text(json.dumps(record))


def test_one_row_per_length_ranked_with_the_jobs_own_rows(tmp_path: Path) -> None:
    scores = {0: (0.01, 0.70, {0.05: 0.72, 0.1: 0.75, 0.2: 0.71}), 1: (0.1, 0.80, {0.05: 0.79, 0.1: 0.81, 0.2: 0.83}),
              2: (0.3, 0.60, None), 3: (0.05, 0.74, {0.05: 0.745, 0.1: 0.73, 0.2: 0.76})}
    for num, (lr, own, posthoc) in scores.items():
        _job(tmp_path, num, lr, own, posthoc, chosen=0.2 if num == 1 else None)
    report = build_report(tmp_path)
    # the oracle: every (job, length) score and every job's own score, sorted by hand (best first, then job number)
    rows = [(own, num, None) for num, (_, own, _) in scores.items()]
    rows += [(v, num, s) for num, (_, _, posthoc) in scores.items() for s, v in (posthoc or {}).items()]
    expected = [(num, s, v) for v, num, s in sorted(rows, key=lambda r: (-r[0], r[1]))]
    assert [(j.num, j.params.get(SIGMA_REL), j.objective) for j in report.ok_jobs] == expected
    assert report.param_names == ["optimizer.lr", SIGMA_REL]
    best = report.best
    assert best is not None and (best.num, best.params[SIGMA_REL]) == (1, 0.2)
    assert best.best_ckpt == str(tmp_path / "1" / "posthoc_ema" / "posthoc-ema-best.ckpt")  # the length exported
    assert all(j.best_ckpt is None for j in report.ok_jobs if j.params.get(SIGMA_REL) not in (None, 0.2))
    text = report.markdown()
    assert "4 jobs: 4 ok, 0 failed" in text and f"{SIGMA_REL}=0.2" in text.split("Best:")[1].splitlines()[0]
    assert "3 job(s) ranked once per post-hoc EMA length (0.05, 0.1, 0.2" in text
    # narrowing counts jobs, not rows: 4 jobs (15 rows) are too few for 5 per searched hyperparameter
    assert not report.narrowed and "4 ranked job(s)" in report.evidence
    assert report.csv().splitlines()[0] == f"rank,job,status,objective,optimizer.lr,{SIGMA_REL},error"
    plain = build_report(tmp_path, sigma_rel=False)  # one row per job
    assert [j.num for j in plain.ok_jobs] == [1, 3, 0, 2] and plain.param_names == ["optimizer.lr"]


def test_a_monitor_the_posthoc_evaluation_does_not_score_makes_no_rows(tmp_path: Path) -> None:
    _job(tmp_path, 0, 0.1, 0.3, {0.05: 0.9}, monitor="val/loss")
    _job(tmp_path, 1, 0.2, 0.2, None, monitor="val/loss")
    report = build_report(tmp_path)
    assert [j.num for j in report.jobs] == [0, 1]
    note = [w for w in report.warnings if "sigma_rel" in w]
    assert len(note) == 1 and "monitoring val/loss" in note[0] and "\n" not in note[0]
    assert main([str(tmp_path), "--no-sigma-rel"]) == 0 and "sigma_rel" not in (tmp_path / "report.md").read_text()


def test_a_length_with_a_non_finite_score_is_left_out_and_the_job_stays_ok(tmp_path: Path) -> None:
    _job(tmp_path, 0, 0.01, 0.70, {0.05: 0.72, 0.1: float("nan")})
    _job(tmp_path, 1, 0.1, 0.80, {0.05: 0.79, 0.1: 0.81})
    report = build_report(tmp_path)
    rows = [(j.num, j.params.get(SIGMA_REL)) for j in report.ok_jobs]
    assert (0, 0.1) not in rows and {(0, None), (0, 0.05), (1, None), (1, 0.05), (1, 0.1)} == set(rows)
    assert not report.failed_jobs
    text = report.markdown()
    assert "2 jobs: 2 ok, 0 failed" in text and "1 (job, length) score(s) not finite, left out." in text
