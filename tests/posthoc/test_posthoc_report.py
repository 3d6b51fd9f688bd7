"""posthoc_ema_report on a real fit: every length scored, the best exported; the exported checkpoint holds the
reconstruction with BatchNorm statistics equal to torch's ``update_bn``, and Lightning's own validation of it logs the
reported scores; the module's weights are put back; one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import update_bn

from lit_tricks.callbacks import PostHocEMA
from lit_tricks.posthoc.ema import posthoc_ema_report, reconstruct_posthoc_ema
from lit_tricks.validation import ArgumentError
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyClassifier, BlobsDataModule]:
    root = tmp_path_factory.mktemp("fit")
    dm = BlobsDataModule(shuffle=False)
    torch.manual_seed(0)
    trainer = tiny_trainer(root, max_epochs=3, limit_val_batches=0,
                           callbacks=[PostHocEMA(snapshot_every_n_steps=4, dirpath=str(root / "s"))])
    model = TinyClassifier(lr=0.05)
    trainer.fit(model, datamodule=dm)
    return root / "s", model, dm


def test_report_scores_each_length_and_exports_the_best(tmp_path: Path,
                                                         fitted: tuple[Path, TinyClassifier, BlobsDataModule]) -> None:
    snapshots, model, dm = fitted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = posthoc_ema_report(snapshots, model, dm, [0.2, 0.03, 0.1], tmp_path, reference=before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the module's weights are back
    assert [r["sigma_rel"] for r in result["rows"]] == [0.03, 0.1, 0.2]
    best = max(result["rows"], key=lambda r: (r["val/acc"], -r["val/nll"]))  # accuracy, then NLL for ties
    assert result["best"] == best and result["reference"]["name"] == "final weights"
    assert json.loads((tmp_path / "posthoc_ema.json").read_text())["best"]["sigma_rel"] == best["sigma_rel"]
    table = (tmp_path / "posthoc_ema.md").read_text()
    assert table.count("\n") == 2 + 3 + 1 and "final weights" in table
    assert (tmp_path / "posthoc_ema.png").stat().st_size > 0

    ckpt = torch.load(tmp_path / "posthoc-ema-best.ckpt", weights_only=True)
    assert ckpt["lit_tricks_posthoc_ema"]["sigma_rel"] == best["sigma_rel"]
    (expected,) = reconstruct_posthoc_ema(snapshots, [best["sigma_rel"]])
    oracle = TinyClassifier()
    oracle.load_state_dict(expected)
    update_bn(dm.train_dataloader(), oracle)  # torch's BatchNorm recalibration, the independent oracle
    for key, value in oracle.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    loaded = TinyClassifier.load_from_checkpoint(tmp_path / "posthoc-ema-best.ckpt")  # the module loads it
    validator = tiny_trainer(tmp_path / "v", enable_checkpointing=False)
    (metrics,) = validator.validate(loaded, datamodule=dm, verbose=False)
    assert metrics["val/acc"] == pytest.approx(best["val/acc"], abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(best["val/nll"], rel=1e-5)


def test_refusals_are_one_line(tmp_path: Path, fitted: tuple[Path, TinyClassifier, BlobsDataModule]) -> None:
    snapshots, model, dm = fitted

    class NoVal(BlobsDataModule):
        def val_dataloader(self) -> list[object]:
            return []

    no_val = NoVal()
    no_val.setup()
    cases = [(lambda: posthoc_ema_report(snapshots, model, no_val, [0.1], tmp_path), "needs a val split"),
             (lambda: posthoc_ema_report(snapshots, model, dm, [0.1], tmp_path, select="val/top5"), "select"),
             (lambda: posthoc_ema_report(snapshots, model, dm, [0.4], tmp_path), "sigma_rels must be"),
             (lambda: posthoc_ema_report(snapshots, model, dm, [0.1], tmp_path, step=5), "step of a snapshot")]
    for call, match in cases:
        with pytest.raises(ArgumentError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written
    result = posthoc_ema_report(snapshots, model, no_val, [0.1], tmp_path, select=None)  # scores, chooses nothing
    assert result["best"] is None and result["checkpoint"] is None and "test/acc" in result["rows"][0]
