"""The resume-equivalence grid: recipe x interruption point x (kill -9 | SIGTERM), each cell bit for bit equal to the
uninterrupted run of the same seed (weights, optimizer, EMA, ensemble members and every callback's state in every
checkpoint file, the lr and the sample ids of every batch, the CSV rows, metrics.json). See ``harness.py``.

``make test`` runs :data:`CI_SIZE` cells drawn with ``LIT_TRICKS_RESUME_SEED`` (default 0) that cover every recipe,
every kind of point and both interruptions; ``make test-resume`` runs the whole grid
(``LIT_TRICKS_RESUME_GRID=full``). Another seed draws other positions for the same cells.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.resume.harness import (
    BATCHES,
    VAL_AFTER,
    assert_same,
    cell_faults,
    ci_cells,
    differences,
    env_seed,
    grid,
    interrupted_run,
    outcome,
    resume_steps,
)

#: Cells ``make test`` runs (each a few seconds: the interrupted run and its resumption).
CI_SIZE = 40
SEED = env_seed()
CELLS = grid() if os.environ.get("LIT_TRICKS_RESUME_GRID") == "full" else ci_cells(SEED, CI_SIZE)

#: Known failures fixed elsewhere: recipe -> (does this run hit it?, reason). Strict: a cell that hits the known
#: failure and still equals the reference fails, so the entry goes once the fix lands.
KNOWN: dict[str, tuple[Callable[[Path], bool], str]] = {
    "full": (
        lambda run_dir: any(step % BATCHES > VAL_AFTER[0] for step in resume_steps(run_dir)),
        "issue 23 item 2 (EMA/ensemble state refactor): EMAWeights(recalibrate_bn_batches>0) iterates the training "
        "loader during the mid-epoch validation, so a checkpoint taken after it resumes at the recalibration's data "
        "position",
    ),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("recipe", "kind", "interruption"), CELLS, ids=["-".join(c) for c in CELLS])
def test_interrupted_run_equals_the_uninterrupted_one(
    recipe: str, kind: str, interruption: str, tmp_path: Path, reference: Callable[[str], dict[str, Any]]
) -> None:
    expected = reference(recipe)
    faults = cell_faults(recipe, kind, interruption, SEED)
    run_dir = interrupted_run(recipe, tmp_path, faults)
    resumed = outcome(run_dir)
    label = f"{recipe} {kind} {interruption} {[str(f) for f in faults]} (seed {SEED})"
    hits, reason = KNOWN.get(recipe, (lambda _: False, ""))
    if hits(run_dir):
        if differences(resumed["records"], expected["records"]):
            pytest.xfail(reason)
        pytest.fail(f"{label}: XPASS(strict) of a known failure, remove it from KNOWN: {reason}")
    assert_same(resumed, expected, label)
