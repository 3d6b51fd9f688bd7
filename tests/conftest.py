"""Shared pytest set-up: one torch thread per test process (CI has 2 cores), quiet Lightning."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
os.environ.setdefault("PL_DISABLE_FORK", "1")
for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
