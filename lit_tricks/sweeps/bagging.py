"""Bagging in one command: train B members on bootstrap resamples (a multirun of ``hparams_search=bagging`` over B
seeds), then test them as one ensemble with :func:`~lit_tricks.sweeps.ensemble.evaluate_sweep_ensemble`.

The notes (000): bagging trains each member on a resample of the training set drawn with replacement and averages
their predictions (Breiman 1996); it mainly lowers the variance of the members.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_tricks.sweeps.ensemble import evaluate_sweep_ensemble

__all__ = ["bag_markdown", "bagging_command", "evaluate_bag", "train_bag"]


def bagging_command(bags: int, sweep_dir: str | Path, first_seed: int = 0,
                    overrides: Sequence[str] = ()) -> list[str]:
    """The ``lit-tricks-train -m`` command line that trains ``bags`` members with seeds ``first_seed, ...``."""
    if isinstance(bags, bool) or not isinstance(bags, int) or bags < 2:
        raise ValueError(f"bags: expected an int >= 2 (members of the bag), got {bags!r}")
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed: expected an int >= 0, got {first_seed!r}")
    seeds = ",".join(str(first_seed + i) for i in range(bags))
    return [sys.executable, "-m", "lit_tricks.cli.train", "-m", "hparams_search=bagging", f"seed={seeds}",
            f"hydra.sweep.dir={Path(sweep_dir)}", *overrides]


def train_bag(bags: int, sweep_dir: str | Path, first_seed: int = 0, overrides: Sequence[str] = (),
              env: dict[str, str] | None = None) -> None:
    """Run :func:`bagging_command` (a Hydra multirun in a child process); raise when it fails to start."""
    proc = subprocess.run(bagging_command(bags, sweep_dir, first_seed, overrides), env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the bagging multirun exited with status {proc.returncode} (see its output above)")


def evaluate_bag(sweep_dir: str | Path, bags: int, combine: str = "mean_prob",
                 trainer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test all ``bags`` members of a bagging sweep as one ensemble; the result of
    :func:`~lit_tricks.sweeps.ensemble.evaluate_sweep_ensemble` plus ``member_acc_mean`` / ``member_acc_best``.

    A member that failed or left no checkpoint is reported as missing (``bags_ok`` < ``bags``).
    """
    result = evaluate_sweep_ensemble(sweep_dir, top_k=bags, combine=combine, trainer_kwargs=trainer_kwargs)
    accs = [float(m["test/acc"]) for m in result["members"] if math.isfinite(float(m["test/acc"]))]
    result.update(bags=bags, bags_ok=len(result["members"]),
                  member_acc_mean=statistics.fmean(accs) if accs else math.nan,
                  member_acc_best=max(accs) if accs else math.nan)
    return result


def bag_markdown(result: dict[str, Any]) -> str:
    """The member vs bag table of :func:`evaluate_bag` as markdown."""
    lines = [f"# Bagging: {result['bags_ok']} of {result['bags']} members ({result['combine']})", "",
             "| member (job) | objective | test/acc |", "|---|---:|---:|"]
    for m in sorted(result["members"], key=lambda m: m["job"]):
        lines.append(f"| {m['job']} | {m['objective']:.4f} | {m['test/acc']:.4f} |")
    lines += ["", "| | test/acc |", "|---|---:|",
              f"| members (mean) | {result['member_acc_mean']:.4f} |",
              f"| best member | {result['member_acc_best']:.4f} |",
              f"| bag | {result.get('test/acc_ensemble', math.nan):.4f} |", "",
              f"Sweep: `{result['sweep_dir']}`"]
    return "\n".join(lines) + "\n"
