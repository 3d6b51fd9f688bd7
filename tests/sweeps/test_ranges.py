"""Search-space parsing, border warnings and narrowed ranges (lit_tricks.sweeps.ranges)."""

from __future__ import annotations

import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from lit_tricks.sweeps.ranges import (
    SearchDim,
    border_warnings,
    format_overrides,
    narrow_ranges,
    parse_search_space,
    position_in_range,
)

SPACE = {
    "optimizer.lr": "tag(log, interval(1e-6, 10.0))",
    "module.weight_decay": "interval(0.0, 0.1)",
    "data.batch_size": "choice(32, 64, 128)",
    "model.depth": "range(2, 8, 2)",
    "seed": "1,2,3",
}


def test_parse_search_space_reads_every_sweep_kind() -> None:
    dims = parse_search_space(SPACE)
    lr = dims["optimizer.lr"]
    assert lr.is_interval and lr.log and (lr.low, lr.high) == (1e-6, 10.0)
    wd = dims["module.weight_decay"]
    assert wd.is_interval and not wd.log
    assert dims["data.batch_size"].choices == (32, 64, 128)
    assert dims["model.depth"].choices == (2, 4, 6)
    assert dims["seed"].choices == (1, 2, 3)
    assert parse_search_space({"trainer.max_epochs": "5"}) == {}  # fixed values are not dimensions


def test_position_is_log_scaled_for_log_dims() -> None:
    lr = SearchDim("lr", 1e-6, 10.0, log=True)
    assert position_in_range(lr, 1e-6) == pytest.approx(0.0)
    assert position_in_range(lr, 10.0) == pytest.approx(1.0)
    assert position_in_range(lr, 1e-3) == pytest.approx(3 / 7)
    assert position_in_range(SearchDim("x", 0.0, 2.0), 0.5) == pytest.approx(0.25)


def test_border_warning_fires_at_edges_only() -> None:
    dims = parse_search_space(SPACE)
    at_edge = border_warnings(dims, {"optimizer.lr": 8.0, "module.weight_decay": 0.05, "data.batch_size": 32})
    assert len(at_edge) == 2
    assert any("optimizer.lr" in w and "upper border" in w for w in at_edge)
    assert any("data.batch_size" in w and "lower border" in w for w in at_edge)
    assert border_warnings(dims, {"optimizer.lr": 1e-3, "module.weight_decay": 0.05, "data.batch_size": 64}) == []
    with pytest.raises(ValueError, match="edge"):
        border_warnings(dims, {}, edge=0.6)


def test_narrow_ranges_inside_and_at_the_border_never_beyond() -> None:
    dims = {"lr": SearchDim("lr", 1e-6, 10.0, log=True)}
    inner = narrow_ranges(dims, [{"lr": 1e-3}, {"lr": 1e-2}], margin=0.1)["lr"]
    assert inner.log and inner.low == pytest.approx(1e-3 / 10**0.7, rel=1e-2)
    assert inner.high == pytest.approx(1e-2 * 10**0.7, rel=1e-2)
    # the best value at the upper border: nothing was measured beyond it, so the range stops there (the border
    # warning tells the user to search beyond); seen in a report: wd proposed up to 562 after searching up to 10
    edge = narrow_ranges(dims, [{"lr": 9.0}, {"lr": 1.0}], margin=0.1)["lr"]
    assert edge.high == 10.0 and edge.low == pytest.approx(1.0 / 10**0.7, rel=1e-2)
    for lows in ([{"lr": 1e-6}, {"lr": 9.9}], [{"lr": 2e-6}, {"lr": 5.0}]):  # spans (nearly) all: unchanged
        assert narrow_ranges(dims, lows)["lr"] == dims["lr"]
    choice = narrow_ranges({"bs": SearchDim("bs", choices=(32, 64, 128))}, [{"bs": 64}, {"bs": 128}])["bs"]
    assert choice.choices == (64, 128)
    with pytest.raises(ValueError, match="top"):
        narrow_ranges(dims, [])


def test_border_warning_for_choices_asks_for_new_values_not_the_same_ones() -> None:
    dims = parse_search_space({"optimizer.lr": "0.3,0.1"})
    (line,) = border_warnings(dims, {"optimizer.lr": 0.3})
    assert "upper border" in line and "add values above 0.3 to the choices" in line and "widen" not in line


def test_narrowed_int_and_non_negative_ranges_stay_what_they_were() -> None:
    # seen in a real report: dropout in [0, 0.3] with the best at 0.026 was extended to interval(-0.075, ...), and an
    # int shift in tag(int, interval(0, 8)) came back as the float interval(1.2, 5.8)
    dims = parse_search_space({"module.dropout": "interval(0.0, 0.3)", "shift": "tag(int, interval(0, 8))",
                               "steps": "tag(log, int, interval(10, 1000))", "bias": "interval(-1.0, 1.0)"})
    assert dims["shift"].integer and dims["steps"].integer and dims["steps"].log
    top = [{"module.dropout": 0.026, "shift": 4, "steps": 200, "bias": -0.95},
           {"module.dropout": 0.1, "shift": 2, "steps": 100, "bias": 0.0}]
    new = narrow_ranges(dims, top)
    assert new["module.dropout"].low == 0.0 and new["module.dropout"].high == pytest.approx(0.13)
    assert new["bias"].low == -1.0  # the best value at the border: the range stops at the searched bound
    assert new["shift"].to_override() == "shift=tag(int, interval(1, 5))"
    assert new["steps"].to_override().startswith("steps=tag(log, int, interval(")
    # and what is printed is what the sweeper samples: integers for the int dimensions
    from lit_tricks.sweeps.study import parse_search_space as optuna_space

    text = {d.name: d.to_override().split("=", 1)[1] for d in new.values()}
    space = optuna_space(text)[0]
    assert type(space["shift"]).__name__ == "IntDistribution" and type(space["steps"]).__name__ == "IntDistribution"
    assert space["module.dropout"].low == 0.0


def test_overrides_round_trip_through_hydras_parser() -> None:
    dims = parse_search_space(SPACE)
    text = format_overrides(dims.values())
    parsed = OverridesParser.create().parse_overrides(shlex.split(text))
    assert [o.get_key_element() for o in parsed] == list(dims)
    assert all(o.is_sweep_override() for o in parsed)
    again = parse_search_space({o.get_key_element(): o.input_line.split("=", 1)[1] for o in parsed})  # type: ignore[union-attr]
    assert again["optimizer.lr"] == dims["optimizer.lr"]
    assert again["data.batch_size"].choices == (32, 64, 128)
