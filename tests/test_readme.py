"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.timeout(180)
def test_readme_callbacks_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "from lit_tricks.callbacks import" in b)
    monkeypatch.chdir(tmp_path)  # checkpoints and ensemble members land here
    namespace: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    metrics = trainer.callback_metrics  # type: ignore[attr-defined]
    assert "test/acc" in metrics and "test/acc_ensemble" in metrics
    assert float(metrics["test/acc"]) > 0.5
