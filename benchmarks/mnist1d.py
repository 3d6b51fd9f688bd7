"""Time to accuracy on MNIST-1D (as airbench defines it for CIFAR-10): the paper's CNN recipe vs
``experiment=mnist1d_fast``, steps, fit seconds and CPU seconds, FINAL test accuracy over paired seeds (no early stop
on test).

Each run is ``scripts/train.py experiment=<recipe> seed=<s>`` in its own process, the recipes interleaved seed by seed
(so both see the same load). Fit seconds are the run's ``timings.fit_s`` (``trainer.fit`` alone: no process start-up,
no data generation, no test pass); its CPU seconds (user + sys of that process, start-up included) are written beside
its ``metrics.json`` as ``cpu.json``. The run directories follow ``scripts/ablate.py``'s layout
(``<out>/runs/<variant>/seed<s>``, default ``outputs/mnist1d_study``), so a finished run is reused by both
(``--set mnist1d --out outputs/mnist1d_study``) and the study may run in sittings; a run is reused only while the
recipe's composed config is still what that run trained (a changed preset reruns it).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from benchmarks.common import md_table  # noqa: E402
from lit_tricks.sweeps.ablation import compose_train, saved_config_matches  # noqa: E402

__all__ = ["RECIPES", "bench_mnist1d", "run_recipe"]

#: (label, run-directory variant, experiment name)
RECIPES = [
    ("paper's CNN recipe (`experiment=mnist1d_baseline`)", "baseline", "mnist1d_baseline"),
    ("lit_tricks (`experiment=mnist1d_fast`)", "fast", "mnist1d_fast"),
]
TARGET = 0.94
STUDY_DIR = ROOT / "outputs" / "mnist1d_study"
CONF = ROOT / "conf"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _result(record: dict[str, Any], timing: dict[str, Any], reused: bool) -> dict[str, Any]:
    return {"acc": float(record["metrics"]["test/acc"]), "fit_seconds": float(record["timings"]["fit_s"]), **timing,
            "reused": reused}


def run_recipe(out: Path, variant: str, experiment: str, seed: int, extra: list[str]) -> dict[str, Any]:
    """One training run (reused when ``metrics.json`` says ok, ``cpu.json`` exists and the recipe is unchanged):
    test/acc, fit, CPU and wall s."""
    run_dir = out / "runs" / variant / f"seed{seed}"
    metrics_path, cpu_path = run_dir / "metrics.json", run_dir / "cpu.json"
    overrides = [f"experiment={experiment}", f"seed={seed}", *extra]
    if metrics_path.is_file() and cpu_path.is_file() and saved_config_matches(run_dir, CONF, overrides):
        record = json.loads(metrics_path.read_text())
        if record.get("status") == "ok" and "fit_s" in record.get("timings", {}):
            return _result(record, json.loads(cpu_path.read_text()), True)
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    cpu, wall = _children_cpu() - cpu0, time.perf_counter() - wall0
    if proc.returncode != 0 or not metrics_path.is_file():
        raise RuntimeError(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    timing = {"cpu_seconds": cpu, "wall_seconds": wall}
    cpu_path.write_text(json.dumps(timing))
    return _result(json.loads(metrics_path.read_text()), timing, False)


def _steps(experiment: str, extra: list[str]) -> int:
    """Optimizer steps of the recipe: epochs x ceil(training samples / batch size) (from the composed config)."""
    cfg = OmegaConf.create(compose_train(CONF, [f"experiment={experiment}", *[o for o in extra if "hydra" not in o]]))
    if cfg.trainer.get("fast_dev_run"):
        return 1
    n_train = int(int(cfg.data.num_samples) // 10 * 10 * float(cfg.data.train_split)) - int(cfg.data.val_size)
    return int(cfg.trainer.max_epochs) * math.ceil(n_train / int(cfg.data.batch_size))


def bench_mnist1d(quick: bool) -> tuple[str, str]:
    """Both recipes over paired seeds (``LIT_TRICKS_MNIST1D_SEEDS``, default 5; quick: 1 seed, fast_dev_run)."""
    from lit_tricks.sweeps.stats import bootstrap_ci

    seeds = [0] if quick else list(range(int(os.environ.get("LIT_TRICKS_MNIST1D_SEEDS", "5"))))
    tmp = tempfile.TemporaryDirectory() if quick else None
    out = Path(tmp.name) if tmp is not None else STUDY_DIR
    extra = ["logger=none", f"paths.data_dir={out / 'data' if quick else ROOT / 'outputs' / 'data'}"]
    if quick:
        extra.append("++trainer.fast_dev_run=true")
    rows: list[list[str]] = []
    summary: dict[str, tuple[int, float]] = {}
    fits: dict[str, list[float]] = {}
    try:
        runs_of: dict[str, list[dict[str, Any]]] = {variant: [] for _, variant, _ in RECIPES}
        for s in seeds:  # interleaved: both recipes of a seed run back to back, under the same load
            for _, variant, experiment in RECIPES:
                runs_of[variant].append(run_recipe(out, variant, experiment, s, extra))
        for label, variant, experiment in RECIPES:
            runs = runs_of[variant]
            fits[variant] = [r["fit_seconds"] for r in runs]
            accs = [r["acc"] for r in runs]
            mean = sum(accs) / len(accs)
            low, high = bootstrap_ci(accs)
            cpu = sum(r["cpu_seconds"] for r in runs) / len(runs)
            steps = _steps(experiment, extra)
            summary[variant] = (steps, mean)
            rows.append([label, str(steps), str(len(seeds)), f"{100 * mean:.2f}",
                         f"[{100 * low:.2f}, {100 * high:.2f}]",
                         f"{100 * min(accs):.1f}-{100 * max(accs):.1f}", f"{statistics.median(fits[variant]):.1f}",
                         f"{cpu:.0f}",
                         "yes" if mean >= TARGET else "no"])
    finally:
        if tmp is not None:
            tmp.cleanup()
    (b_steps, _), (f_steps, f_mean) = summary["baseline"], summary["fast"]
    ratios = [b / f for b, f in zip(fits["baseline"], fits["fast"])]
    body = [
        f"MNIST-1D (4000 train / 1000 test), seeds {seeds[0]}..{seeds[-1]} paired; final weights, no early stop. "
        "Fit s = `trainer.fit` alone (the run's `timings.fit_s`; median over seeds); CPU s = user + sys of the whole "
        "`scripts/train.py` process (start-up and data loading included); 1 torch thread; recipes interleaved seed "
        "by seed." + (" Quick mode: fast_dev_run, numbers meaningless." if quick else ""),
        "",
        md_table(["recipe", "optimizer steps", "seeds", "final test acc %", "95% CI (bootstrap)", "range",
                  "fit s / run", "CPU s / run", f">= {100 * TARGET:.0f}%"], rows),
        "",
        f"- steps: paper recipe / fast = **{b_steps / f_steps:.1f}x**; the fast recipe's mean "
        f"{100 * f_mean:.2f}% is {'at or above' if f_mean >= TARGET else 'below'} the paper's {100 * TARGET:.0f}%.",
        f"- fit seconds: paper recipe / fast, seed by seed = **{statistics.median(ratios):.1f}x** (median; "
        f"{min(ratios):.1f}-{max(ratios):.1f}).",
    ]
    return "MNIST-1D time to 94% (paper recipe vs mnist1d_fast)", "\n".join(body)
