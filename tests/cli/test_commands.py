"""The lit-tricks-* commands: --help examples in their own names and the folders the presets write; lit-tricks-curves
labels a diagnosis of losses as losses."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lit_tricks.cli import bag, curves, ensemble, migrate, posthoc_ema, report, workers

MAINS: dict[str, Callable[[list[str]], Any]] = {
    "lit-tricks-report": report.main, "lit-tricks-ensemble": ensemble.main, "lit-tricks-bag": bag.main,
    "lit-tricks-curves": curves.main, "lit-tricks-workers": workers.main, "lit-tricks-posthoc-ema": posthoc_ema.main,
    "lit-tricks-migrate": migrate.main,
}


def test_every_installed_command_is_tested_and_documented() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    scripts = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"])
    assert scripts == {*MAINS, "lit-tricks-train"}
    page = (root / "docs" / "guide" / "commands.md").read_text()
    assert all(f"| `{name}` |" in page for name in scripts), sorted(scripts)


@pytest.mark.parametrize("command", sorted(MAINS))
def test_help_examples_use_the_command_name_and_real_folders(command: str, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    with pytest.raises(SystemExit) as info:
        MAINS[command](["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    examples = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("lit-tricks-")]
    assert examples and all(ex.startswith(command + " ") for ex in examples), examples
    assert text.startswith(f"usage: {command} ")
    # sweeps of the lit_optuna presets live in <log dir>/<task>/multiruns/<study name>, not a timestamp folder
    assert not re.search(r"multiruns/\d{4}-\d\d-\d\d", text), text


def _csv(path: Path, rows: list[tuple[int, float, float]]) -> Path:
    lines = ["epoch,step,train/loss,val/loss"]
    lines += [f"{e},{e * 10 + 9},{tr},\n{e},{e * 10 + 9},,{va}" for e, tr, va in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_curves_labels_losses_as_losses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # seen: "train error 1.3715 ... target 1.3715 ... nothing urgent" for a run that logged no accuracy
    csv_path = _csv(tmp_path / "metrics.csv", [(0, 2.0, 2.1), (1, 1.5, 1.6), (2, 1.3715, 1.38)])
    assert curves.main([str(csv_path), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "train loss 1." in out and "val loss 1." in out and "from losses" in out
    assert not re.search(r"(train|val) error", out) and "nothing urgent" not in out
    assert "bias not judged" in out
    assert curves.main([str(csv_path), "--target-error", "0.1", "--out", str(tmp_path / "c.png")]) == 0
    judged = capsys.readouterr().out
    assert "target loss 0.1000" in judged and "high bias" in judged  # 1.37 train loss vs a target of 0.1
