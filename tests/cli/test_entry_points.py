"""The console entry points work from the built wheel, installed --no-deps into a fresh venv that borrows the
current environment's packages through a .pth file (torch is never installed twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("lit-tricks-train", "lit-tricks-report", "lit-tricks-ensemble", "lit-tricks-curves", "lit-tricks-bag",
            "lit-tricks-migrate", "lit-tricks-posthoc-ema", "lit-tricks-workers")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_entry_points_from_the_wheel(tmp_path: Path) -> None:
    site = Path(torch.__file__).resolve().parents[1]  # the environment that holds torch, lightning, hydra, setuptools
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    wheel = next(dist.glob("lit_tricks-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    py = bin_dir / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "borrowed.pth").write_text(str(site) + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   env=clean, capture_output=True, timeout=300)
    where = subprocess.run([str(py), "-c", "import lit_tricks; print(lit_tricks.__file__)"], check=True, env=clean,
                           cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"lit_tricks imported from {where}, not from the installed wheel"
    helps = {}
    for command in COMMANDS:
        proc = subprocess.run([str(bin_dir / command), "--help"], env=clean, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{command} --help: {proc.stderr[-2000:]}"
        assert "usage" in proc.stdout.lower() or "== Configuration groups ==" in proc.stdout, command
        helps[command] = proc.stdout
    assert "optimizer: adagrad, adam" in helps["lit-tricks-train"]  # the conf groups were shipped in the wheel
