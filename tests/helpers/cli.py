"""Run ``lit-tricks-train`` in this process (a Hydra composition, no new Python process): returns its exit code."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra


def run_train_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> Any:
    """``lit-tricks-train <argv>``: the exit code (None or 0 when it ended normally)."""
    from lit_tricks.cli import train

    monkeypatch.setattr(sys, "argv", ["lit-tricks-train", *argv])
    GlobalHydra.instance().clear()
    try:
        train.main()
    except SystemExit as exit_:
        return exit_.code
    finally:
        GlobalHydra.instance().clear()
    return None
