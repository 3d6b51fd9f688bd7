"""The base-config cache: a hit rebuilds exactly the dataclasses hydra-zen builds (the oracle) without building."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from lit_tricks import config_bases
from lit_tricks.config_bases import BASES, build_base, cached_bases


def described(node: Any) -> tuple[Any, ...]:
    fields = [(f.name, f.type, f.default, f.default_factory is dataclasses.MISSING, f.init, f.repr, f.compare, f.hash,
               f.kw_only) for f in dataclasses.fields(node)]
    params = node.__dataclass_params__
    return (node.__name__, node.__module__, fields, params.eq, params.unsafe_hash, params.frozen,
            OmegaConf.to_yaml(OmegaConf.structured(node)))


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    return {path: build_base(path) for path in BASES}


def test_a_cache_hit_rebuilds_hydra_zens_dataclasses_without_building(tmp_path: Path, built: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = cached_bases(tmp_path)  # a miss: built, then written
    assert [p.name for p in tmp_path.iterdir()] == [f"config_bases-{config_bases._cache_key()}.json"]

    def no_build(path: str) -> Any:
        raise AssertionError(f"built {path} on a cache hit")

    monkeypatch.setattr(config_bases, "build_base", no_build)
    hit = cached_bases(tmp_path)
    assert list(hit) == list(BASES)
    for path in BASES:
        assert described(hit[path]) == described(built[path]) == described(first[path]), path
    required = OmegaConf.structured(hit["lightning.pytorch.loggers.CSVLogger"])
    assert OmegaConf.is_missing(required, "save_dir") and required._target_ == "lightning.pytorch.loggers.CSVLogger"
    assert OmegaConf.structured(hit["torch.optim.SGD"])._partial_ is True
    with pytest.raises(Exception, match="lrr"):  # a preset key the signature lacks still fails to merge
        OmegaConf.merge(OmegaConf.structured(hit["torch.optim.SGD"]), {"lrr": 0.1})


def test_a_changed_key_or_a_broken_file_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached_bases(tmp_path)
    old = next(tmp_path.iterdir())
    monkeypatch.setattr(config_bases, "_cache_key", lambda: "other")  # e.g. a source edited, torch upgraded
    calls: list[str] = []
    real = config_bases.build_base
    monkeypatch.setattr(config_bases, "build_base", lambda path: calls.append(path) or real(path))
    cached_bases(tmp_path)
    assert len(calls) == len(BASES) and old.exists()  # rebuilt; the other key's file kept (another checkout's)
    new = tmp_path / "config_bases-other.json"
    new.write_text("{not json")
    calls.clear()
    assert list(cached_bases(tmp_path)) == list(BASES) and len(calls) == len(BASES)
    assert new.read_text().startswith('{"key": "other"')
    (tmp_path / "blocked").write_text("")  # an unwritable cache directory: built every time, no error
    assert list(cached_bases(tmp_path / "blocked")) == list(BASES)


def test_the_most_recently_used_keys_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkouts or environments sharing the cache directory do not evict each other: a write keeps the
    ``CACHE_KEYS_KEPT`` most recently used keys (a hit marks its file used), and removes the older ones."""
    import os

    for age, name in enumerate(["k5", "k4", "k3", "k2", "k1"]):  # k5 the oldest
        (tmp_path / f"config_bases-{name}.json").write_text("{}")
        os.utime(tmp_path / f"config_bases-{name}.json", (1000 + age, 1000 + age))
    os.utime(tmp_path / "config_bases-k1.json", (5000, 5000))  # used last
    monkeypatch.setattr(config_bases, "_cache_key", lambda: "new")
    cached_bases(tmp_path)
    kept = sorted(f.name for f in tmp_path.glob("config_bases-*.json"))
    assert config_bases.CACHE_KEYS_KEPT == 4
    assert kept == ["config_bases-k1.json", "config_bases-k2.json", "config_bases-k3.json", "config_bases-new.json"]
    fresh = tmp_path / "config_bases-new.json"
    os.utime(fresh, (1, 1))
    monkeypatch.setattr(config_bases, "build_base", lambda path: pytest.fail(f"a hit built {path}"))
    cached_bases(tmp_path)
    assert fresh.stat().st_mtime > 1  # the hit marked it used
