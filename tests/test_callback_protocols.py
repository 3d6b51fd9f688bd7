"""lit_tricks.callback_protocols: what the run asks its callbacks (failure, evaluated variant, its files)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_tricks.callback_protocols import (
    EvaluatesVariant,
    FailsFit,
    evaluated_variant,
    fit_failure,
    variant_checkpoint,
)
from lit_tricks.callbacks import EMAWeights, NaNGuard


def test_the_callbacks_implement_the_protocols_structurally() -> None:
    assert isinstance(NaNGuard(), FailsFit) and isinstance(EMAWeights(), EvaluatesVariant)
    assert not isinstance(ModelCheckpoint(), FailsFit | EvaluatesVariant)


def test_fit_failure_names_the_first_reason() -> None:
    quiet, failed = NaNGuard(), NaNGuard()
    failed.stop_reason = "NaNGuard: non-finite loss/gradient at step 3 (policy stop)"
    assert fit_failure([ModelCheckpoint(), quiet]) is None
    assert fit_failure([quiet, failed]) == failed.stop_reason


def test_evaluated_variant_and_its_checkpoint(tmp_path: Path) -> None:
    ema, raw = EMAWeights(), EMAWeights(evaluate_with="raw")
    assert evaluated_variant([ModelCheckpoint(), raw]) is None
    assert evaluated_variant([raw, ema]) == "ema"
    # validate_both: the un-suffixed metrics are the raw weights' (the EMA's carry _ema), so no variant produced them
    assert evaluated_variant([EMAWeights(validate_both=True)]) is None
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"")
    assert variant_checkpoint([ema], ckpt) is None and variant_checkpoint([ema], None) is None  # no twin yet
    (tmp_path / "ema-best.ckpt").write_bytes(b"")
    assert variant_checkpoint([ModelCheckpoint(), raw], str(ckpt)) == str(tmp_path / "ema-best.ckpt")
    assert variant_checkpoint([ModelCheckpoint()], str(ckpt)) is None
