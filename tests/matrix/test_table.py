"""The committed docs/tested_with.md is the rendering of the current cell registry (marks only, no test rerun)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tested_with_table_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("_matrix_table", ROOT / "scripts" / "matrix_table.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    cells = script.collect_cells(ROOT)
    assert len(cells) >= 50, "the matrix lost its cells"
    assert len({(c.callback, c.dimension, c.test) for c in cells}) == len(cells)
    expected = script.render(cells)
    assert (ROOT / "docs" / "tested_with.md").read_text() == expected, (
        "docs/tested_with.md is out of date: run `python scripts/matrix_table.py`"
    )
