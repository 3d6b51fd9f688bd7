"""A run resumed with a changed identifying argument (EMA decay, ensemble monitor mode, EarlyStopping mode) says in
one line that the callback's saved state is not restored, naming the old and new values; unchanged: no warning.
(Arguments that only size a state, such as the ensemble's top_k, are not identifying: tests/resume/test_changed_args.)
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_tricks.callbacks import CheckpointEnsemble, EarlyStopping, EMAWeights
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

CASES: dict[str, tuple[Callable[[], Callback], Callable[[], Callback], str]] = {
    "ema": (lambda: EMAWeights(decay=0.9), lambda: EMAWeights(decay=0.8), "decay 0.9 -> 0.8"),
    "ensemble": (lambda: CheckpointEnsemble(top_k=2, monitor="val/loss", keep_inline=True),
                 lambda: CheckpointEnsemble(top_k=2, monitor="val/loss", mode="max", keep_inline=True),
                 "mode 'min' -> 'max'"),
    "early_stopping": (lambda: EarlyStopping(monitor="val/loss", mode="min"),
                       lambda: EarlyStopping(monitor="val/loss", mode="max"), "mode 'min' -> 'max'"),
}


def _fit(root: Path, callback: Callback, epochs: int, ckpt_path: str | None = None) -> None:
    trainer = tiny_trainer(root, max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
                           num_sanity_val_steps=0,
                           callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)])
    trainer.fit(TinyClassifier(), BlobsDataModule(), ckpt_path=ckpt_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_with_changed_arguments_warns_naming_old_and_new_values(tmp_path: Path, name: str) -> None:
    old, new, change = CASES[name]
    _fit(tmp_path, old(), epochs=1)
    last = str(tmp_path / "first.ckpt")
    shutil.copy(tmp_path / "ckpt" / "last.ckpt", last)  # the resumed runs overwrite last.ckpt
    with pytest.warns(UserWarning, match="saved with other arguments") as record:
        _fit(tmp_path, new(), epochs=2, ckpt_path=last)
    messages = [str(w.message) for w in record if "saved with other arguments" in str(w.message)]
    assert len(messages) == 1 and change in messages[0] and "\n" not in messages[0]
    with warnings.catch_warnings(record=True) as unchanged:
        warnings.simplefilter("always")
        _fit(tmp_path, old(), epochs=2, ckpt_path=last)
    assert not [w for w in unchanged if "saved with other arguments" in str(w.message)]


def test_changed_args_lists_every_changed_argument() -> None:
    from lit_tricks.fault.state_keys import changed_args

    ema: Any = EMAWeights(decay=0.5, half_life_steps=10)
    checkpoint = {"callbacks": {EMAWeights(decay=0.9).state_key: {}}}
    [(_key, diff)] = changed_args(ema, checkpoint)
    assert diff == {"decay": (0.9, 0.5), "half_life_steps": (None, 10)}


def test_cached_state_key_is_lightnings_key_and_follows_a_changed_argument() -> None:
    # Lightning reads state_key at every hook dispatch; the cache must never hand out a key of older arguments
    import lit_tricks.callbacks as cbs
    from lit_tricks.fault.state_keys import cached_state_key

    made = [cbs.EMAWeights(decay=0.9), cbs.GradientClipping(max_norm=1.0), cbs.NaNGuard(), cbs.RNGState(),
            cbs.PostHocEMA(), cbs.LayerStats()]
    for cb in made:
        assert cb.state_key == cb.state_key  # built, then served from the cache
        cached = cb.__dict__.get("_lit_tricks_state_key")
        assert cached is not None and cached[1] == cb.state_key, type(cb).__name__
    ema = made[0]
    ema.decay = 0.8
    assert ema.state_key == "EMAWeights{'decay': 0.8, 'half_life_steps': None}"
    clip = made[1]
    clip.max_norm = 2.0
    assert "'max_norm': 2.0" in clip.state_key

    class Listy(Callback):
        def __init__(self) -> None:
            self.values = [1, 2]

        @property
        def state_key(self) -> str:
            return cached_state_key(self, values=self.values)

    listy = Listy()
    assert listy.state_key.endswith("Listy{'values': [1, 2]}")
    listy.values.append(3)  # changed in place: a list is never cached
    assert listy.state_key.endswith("Listy{'values': [1, 2, 3]}")
