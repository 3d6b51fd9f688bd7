"""A callback whose state size follows an argument (a history length, a top-k, a window), resumed with another value
of it, keeps the newest values and never invents any (an invented zero in a percentile window drives the next
clipping threshold to zero). One test per (callback, argument) that sizes state, smaller and larger.

The state goes through ``state_dict`` -> ``torch.save`` -> ``torch.load(weights_only=True)`` -> ``load_state_dict``
of an instance built with the other value, as a resumed run does.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_tricks.callbacks import CheckpointEnsemble, GradientClipping, NaNGuard
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

#: Owned by the EMA/ensemble/NaNGuard/clipping state refactor (issue 23's class of bugs, fixed there).
REFACTOR = "issue 23 (changed-argument resume), to be fixed by the EMA/ensemble/NaNGuard/clipping state refactor"


def _reload(state: dict[str, Any], into: Callback) -> Callback:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    into.load_state_dict(torch.load(buffer, weights_only=True))
    return into


def _fit(tmp_path: Path, callback: Callback, batches: int = 6) -> None:
    tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=1, num_sanity_val_steps=0,
                 callbacks=[callback]).fit(TinyClassifier(), datamodule=BlobsDataModule())


@pytest.mark.parametrize("new_history", [3, 9], ids=["smaller", "larger"])
@pytest.mark.xfail(strict=True, reason=REFACTOR + ": GradientClipping(history) keeps the first ring slots and pads "
                   "with zeros")
def test_clipping_history(tmp_path: Path, new_history: int) -> None:
    old = GradientClipping(mode="auto", history=5)
    _fit(tmp_path, old, batches=7)  # 7 norms through a ring of 5: the ring has wrapped
    newest = old.filled_history()
    resumed = _reload(old.state_dict(), GradientClipping(mode="auto", history=new_history))
    assert isinstance(resumed, GradientClipping)
    kept = resumed.filled_history()
    assert torch.equal(kept, newest[-min(new_history, newest.numel()):])  # the newest, oldest first, no zeros


@pytest.mark.parametrize("new_top_k", [
    pytest.param(1, id="smaller", marks=pytest.mark.xfail(
        strict=True, reason=REFACTOR + ": CheckpointEnsemble(top_k) keeps every saved member")),
    pytest.param(4, id="larger"),
])
def test_ensemble_top_k(tmp_path: Path, new_top_k: int) -> None:
    old = CheckpointEnsemble(top_k=2, monitor="val/loss", keep_inline=True)
    tiny_trainer(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                 callbacks=[old]).fit(TinyClassifier(), datamodule=BlobsDataModule())
    saved = [(m["epoch"], m["score"]) for m in old.members]
    resumed = _reload(old.state_dict(), CheckpointEnsemble(top_k=new_top_k, monitor="val/loss", keep_inline=True))
    assert isinstance(resumed, CheckpointEnsemble)
    kept = [(m["epoch"], m["score"]) for m in resumed.members]
    best = sorted(saved, key=lambda m: m[1])[:new_top_k]
    assert sorted(kept, key=lambda m: m[1]) == best  # the best saved members, none invented


@pytest.mark.parametrize("new_window", [1, 6], ids=["smaller", "larger"])
def test_nan_guard_divergence_window_and_reference(tmp_path: Path, new_window: int) -> None:
    """NaNGuard's divergence state is counters (a reference sum over the first steps, the run of steps above it):
    resumed with another window or reference length they are kept as saved, nothing is added."""
    old = NaNGuard(divergence_factor=1e9, divergence_ref_steps=3, divergence_window=3)
    _fit(tmp_path, old)
    reference, above = old.reference, old.above
    resumed = _reload(old.state_dict(), NaNGuard(divergence_factor=1e9, divergence_ref_steps=new_window,
                                                 divergence_window=new_window))
    assert isinstance(resumed, NaNGuard)
    assert resumed.reference == reference and resumed.above == above and resumed.ref_count == old.ref_count
