"""Preemption() with its default signals works on a platform without SIGUSR1 (Windows)."""

from __future__ import annotations

import signal

import pytest

from lit_tricks.callbacks.preemption import Preemption


def test_default_signals_skip_those_the_platform_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    without = {s for s in signal.valid_signals() if getattr(s, "name", "") != "SIGUSR1"}
    monkeypatch.setattr(signal, "valid_signals", lambda: without)
    monkeypatch.delattr(signal, "SIGUSR1")
    assert Preemption().signals == ("SIGTERM",)
    with pytest.raises(ValueError, match="SIGUSR1"):
        Preemption(signals=("SIGUSR1",))  # asked for by name: still refused, naming it


def test_default_signals_on_this_platform() -> None:
    assert Preemption().signals == ("SIGTERM", "SIGUSR1")
