"""The uninterrupted reference run of each recipe, run once per test session and shared by every cell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.resume.harness import outcome, run


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """``reference(recipe)``: the outcome of the uninterrupted run of ``recipe`` (computed on first use)."""
    cache: dict[str, dict[str, Any]] = {}

    def get(recipe: str) -> dict[str, Any]:
        if recipe not in cache:
            run_dir: Path = tmp_path_factory.mktemp(f"ref-{recipe}") / "run"
            assert run(recipe, run_dir) == "done"
            cache[recipe] = outcome(run_dir)
        return cache[recipe]

    return get
