"""``cached_state_key`` never hands out a key other than Lightning's ``_generate_state_key`` of the current argument
values: values equal but of another repr (1 vs 1.0, True vs 1, -0.0 vs 0.0, a numpy float), NaN, a list changed in
place, copies and pickles of a callback, subclasses, and the keys of checkpoints written before the cache."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback

import lit_tricks.callbacks as cbs


def fresh(cb: Callback, **args: Any) -> str:
    return cb._generate_state_key(**args)


@pytest.mark.parametrize(("first", "then"), [(1.0, 1), (1, 1.0), (1, True), (0.0, -0.0), (2.0, np.float64(2.0)),
                                             (float("nan"), float("nan")), (2.0, 3.0)])
def test_a_reassigned_argument_gives_lightnings_key_of_the_new_value(first: Any, then: Any) -> None:
    clip = cbs.GradientClipping(max_norm=5.0)
    clip.max_norm = first
    _ = clip.state_key  # cached
    clip.max_norm = then
    expected = fresh(clip, mode=clip.mode, max_norm=then, norm_type=clip.norm_type, max_value=clip.max_value,
                     agc_factor=clip.agc_factor, percentile=clip.percentile)
    assert clip.state_key == expected


def test_tuple_arguments_follow_their_elements() -> None:
    ema: Any = cbs.PostHocEMA(gammas=(16.97, 7.0))
    assert ema.state_key == ema.state_key
    _ = ema.state_key
    ema.gammas[1] = 7  # in place, equal value, another repr
    assert ema.state_key == fresh(ema, gammas=(16.97, 7), update_every_n_steps=ema.update_every_n_steps)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_carry_no_stale_key(how: str) -> None:
    ema = cbs.EMAWeights(decay=0.9)
    _ = ema.state_key
    other: Any = copy.deepcopy(ema) if how == "deepcopy" else pickle.loads(pickle.dumps(ema))
    assert other.state_key == ema.state_key
    other.decay = 0.8
    assert other.state_key == "EMAWeights{'decay': 0.8, 'half_life_steps': None}"
    assert ema.state_key == "EMAWeights{'decay': 0.9, 'half_life_steps': None}"  # two instances, two caches


def test_subclass_keys_name_the_subclass_and_an_override_wins() -> None:
    class MyEMA(cbs.EMAWeights):
        pass

    class Fixed(cbs.EMAWeights):
        @property
        def state_key(self) -> str:
            return "fixed"

    base, sub = cbs.EMAWeights(decay=0.9), MyEMA(decay=0.9)
    assert base.state_key.startswith("EMAWeights{") and sub.state_key.startswith(f"{MyEMA.__qualname__}{{")
    assert Fixed(decay=0.9).state_key == "fixed"


def test_keys_are_those_checkpoints_were_written_with() -> None:
    """The literal keys the code before the cache wrote (Lightning's ``f"{qualname}{kwargs!r}"``)."""
    assert cbs.EMAWeights(decay=0.9).state_key == "EMAWeights{'decay': 0.9, 'half_life_steps': None}"
    assert cbs.NaNGuard().state_key == fresh(cbs.NaNGuard(), policy=cbs.NaNGuard().policy)
    ema: Any = cbs.PostHocEMA()
    assert ema.state_key == fresh(ema, gammas=tuple(ema.gammas), update_every_n_steps=ema.update_every_n_steps)
