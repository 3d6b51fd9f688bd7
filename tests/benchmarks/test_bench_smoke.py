"""The benchmark runner's --quick mode runs end to end and writes every section (numbers are never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_quick_benchmarks_write_all_sections(tmp_path: Path) -> None:
    from benchmarks.run_all import BENCHES, main

    out = tmp_path / "RESULTS.md"
    assert main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# lit_tricks benchmarks")
    assert "| torch threads |" in text
    assert text.count("\n## ") == len(BENCHES)
    assert "failed:" not in text
    assert "clip_grad_norm_(foreach=True)" in text and "EMAWeightAveraging" in text
