"""Hydra's composition errors condensed to one line (lit_tricks.cli.hydra_errors is the only user of internals)."""

from __future__ import annotations

import sys

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lit_tricks.cli.hydra_errors import condense_hydra_error, condensed_hydra_errors


def test_missing_group_option_becomes_one_line_with_the_valid_names() -> None:
    from hydra import compose, initialize_config_module

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_tricks.conf", version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose("train", overrides=["scheduler=does_not_exist"])
    GlobalHydra.instance().clear()
    line = condense_hydra_error(info.value)
    assert line is not None and "\n" not in line
    assert line.startswith("scheduler=does_not_exist: no such option")
    assert "cosine" in line and "warmup_cosine" in line and "sgdr" in line


def test_other_errors_are_left_to_hydra() -> None:
    assert condense_hydra_error(ValueError("mine")) is None


def test_hydra_main_under_the_context_prints_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The internal hook really is what @hydra.main goes through (fails if Hydra renames it)."""

    @hydra.main(version_base="1.3", config_path="pkg://lit_tricks.conf", config_name="train")
    def app(cfg: DictConfig) -> None:  # pragma: no cover - composition fails first
        raise AssertionError("composed a config with an unknown option")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["app", "optimizer=sgdd", "hydra.run.dir=/nonexistent/never"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as info, condensed_hydra_errors():
        app()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert info.value.code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lit_tricks: optimizer=sgdd: no such option") and "adamw" in lines[0]
