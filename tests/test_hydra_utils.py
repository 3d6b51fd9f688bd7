"""hydra_utils: the one HydraConfig accessor and the one OmegaConf -> plain converter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from lit_tricks.hydra_utils import hydra_config, to_plain


@pytest.fixture
def in_hydra_app() -> Iterator[None]:
    hydra = OmegaConf.structured(HydraConf)
    hydra.runtime.output_dir = "/runs/x"
    hydra.sweeper = OmegaConf.create({"_target_": "my.Sweeper", "direction": "maximize"})
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]  # other tests must not see this app


def test_hydra_config_outside_and_inside_an_app(in_hydra_app: None) -> None:
    hc = hydra_config()
    assert hc is not None and hc is HydraConfig.get()
    assert hc.runtime.output_dir == "/runs/x"
    assert hc.sweeper.direction == "maximize"
    HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert hydra_config() is None


def test_callers_read_the_app_through_it(in_hydra_app: None) -> None:
    from lit_tricks.trainers.hydra_job import sweeper_target

    assert sweeper_target() == "my.Sweeper"
    HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert sweeper_target() is None


def test_to_plain() -> None:
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": [1, {"d": "${a}"}]})
    plain = to_plain(cfg)
    assert plain == {"a": 1, "b": 1, "c": [1, {"d": 1}]}
    assert type(plain) is dict and type(plain["c"]) is list and type(plain["c"][1]) is dict
    lst = to_plain(OmegaConf.create([1, 2]))
    assert lst == [1, 2] and not isinstance(lst, ListConfig)
    marker = object()
    assert to_plain(marker) is marker and to_plain((1, 2)) == (1, 2) and to_plain(None) is None
    assert not isinstance(to_plain(OmegaConf.create({})), DictConfig)
