"""scripts/plot_schedule.py and scripts/show_augment.py write their PNGs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.schedules.cases import BASE

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_schedule_png_and_curve(tmp_path: Path) -> None:
    script = _load("plot_schedule")
    out = tmp_path / "s.png"
    assert script.main(["warmup_cosine", "plateau", "none", "--total-steps", "40", "--steps-per-epoch", "4",
                        "--set", "warmup_epochs=1", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    curve = script.schedule_curve(script.load_schedule("sgdr", ["T_0=2", "unit=step"]), 6, 2, BASE)
    assert curve[0] == BASE and curve[1] == pytest.approx(0.5 * BASE) and curve[2] == pytest.approx(0.8 * BASE)
    with pytest.raises(SystemExit, match="unknown schedule 'cosin'; valid:"):
        script.load_schedule("cosin")


def test_show_augment_png(tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    assert _load("show_augment").main(["cifar_basic", "--rows", "2", "--draws", "2", "--size", "16", "--rgb",
                                       "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
