"""CheckpointEnsemble on a real CPU Trainer: member sources, ensemble == mean of members, test metrics, export,
soup, exact resume, DDP (2 gloo processes) and a resnet18 32x32 smoke run."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_tricks.callbacks.clipping import GradientClipping
from lit_tricks.callbacks.ensemble import CheckpointEnsemble, load_member_state_dict
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer
from tests.helpers.tolerance import ulps

ROOT = Path(__file__).resolve().parents[2]


def no_dropout_model(seed: int = 0) -> TinyClassifier:
    torch.manual_seed(seed)
    model = TinyClassifier()
    model.net[3].p = 0.0  # dropout draws from the global RNG, which a resume does not restore
    return model


def val_x() -> torch.Tensor:
    dm = BlobsDataModule(shuffle=False)
    dm.setup()
    return dm.val_set.tensors[0]


class MetricProbe(Callback):
    def __init__(self, key: str) -> None:
        self.key, self.values = key, []  # type: ignore[var-annotated]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics[self.key]))


def test_snapshot_members_and_ensemble_equals_mean_of_members(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(every_n_epochs=1, dirpath=str(tmp_path / "ens"))
    model = no_dropout_model()
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[ens])
    trainer.fit(model, BlobsDataModule(shuffle=False))
    assert [m["epoch"] for m in ens.members] == [0, 1, 2]
    assert [m["step"] for m in ens.members] == [8, 16, 24]
    assert all(Path(p).is_file() and Path(p).parent == tmp_path / "ens" for p in ens.member_paths())
    # the last member is the final model
    for k, v in model.state_dict().items():
        assert torch.equal(load_member_state_dict(ens.member_paths()[-1])[k], v), k
    x = val_x()
    one_by_one = []
    for sd in ens.member_state_dicts():
        m = TinyClassifier()
        m.load_state_dict(sd)
        with torch.no_grad():
            one_by_one.append(m.eval()(x).softmax(-1))
    expected = torch.stack(one_by_one).mean(0)
    assert torch.equal(ens.predict_proba(x, model), expected)
    ens.use_vmap = True  # the vmap path (default off on CPU) gives the same numbers
    assert ens.ensemble(model).use_vmap
    torch.testing.assert_close(ens.predict_proba(x, model), expected, **ulps(torch.float32, 16))  # bmm vs mm
    ens.use_vmap = None
    # test logs single-model and ensemble metrics side by side
    results = trainer.test(model, BlobsDataModule(shuffle=False), verbose=False)[0]
    assert {"test/acc", "test/acc_ensemble", "test/loss_ensemble"} <= set(results)
    dm = BlobsDataModule(shuffle=False)
    dm.setup()
    acc_ens = float((expected.argmax(-1) == dm.val_set.tensors[1]).float().mean())
    assert results["test/acc_ensemble"] == pytest.approx(acc_ens, abs=1e-6)
    # export: one module, same numbers
    exported = ens.export(model)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), expected)


def test_top_k_by_monitor_keeps_the_best_and_deletes_the_rest(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(top_k=2, monitor="val/loss", mode="min", dirpath=str(tmp_path / "ens"))
    probe = MetricProbe("val/loss")
    trainer = tiny_trainer(tmp_path, max_epochs=4, callbacks=[ens, probe])
    model = TinyClassifier()
    model.hparams.lr = 0.5  # noisy enough that val/loss is not monotone in 4 epochs: exercises eviction order
    trainer.fit(model, BlobsDataModule(shuffle=False))
    best = sorted(range(4), key=lambda e: probe.values[e])[:2]
    assert sorted(m["epoch"] for m in ens.members) == sorted(best)
    assert sorted(m["score"] for m in ens.members) == pytest.approx(sorted(probe.values[e] for e in best))
    assert sorted(os.listdir(tmp_path / "ens")) == sorted(Path(p).name for p in ens.member_paths())
    # top_k without monitor: the ModelCheckpoint's best_k_models become the members at fit end
    reuse = CheckpointEnsemble(top_k=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=3)
    tiny_trainer(tmp_path, max_epochs=4, callbacks=[reuse, ckpt]).fit(model, BlobsDataModule(shuffle=False))
    best_two = sorted(ckpt.best_k_models, key=lambda p: float(ckpt.best_k_models[p]))[:2]
    assert reuse.member_paths() == best_two
    assert len(reuse.member_state_dicts()) == 2
    with pytest.raises(ValueError, match="monitor"):
        CheckpointEnsemble(monitor="val/loss")
    with pytest.raises(ValueError, match="member source"):
        CheckpointEnsemble()


def test_top_k_scores_only_epochs_that_validated(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(top_k=4, monitor="val/acc", mode="max", keep_inline=True)
    trainer = tiny_trainer(tmp_path, max_epochs=4, check_val_every_n_epoch=2, callbacks=[ens])
    trainer.fit(no_dropout_model(), BlobsDataModule(shuffle=False))
    assert [m["epoch"] for m in ens.members] == [1, 3]  # no stale score reused at epochs 0 and 2


class HalveForValidation(Callback):
    """Stands in for EMAWeights: other weights are swapped in for validation and swapped back at its end."""

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raw = copy.deepcopy(pl_module.state_dict())
        with torch.no_grad():
            for p in pl_module.parameters():
                p.mul_(0.5)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.load_state_dict(self.raw)


@pytest.mark.parametrize("swap_first", [True, False])
def test_top_k_members_are_the_evaluated_weights_whatever_the_callback_order(tmp_path: Path, swap_first: bool) -> None:
    ens = CheckpointEnsemble(every_n_epochs=1, top_k=1, monitor="val/acc", mode="max", keep_inline=True)
    swap = HalveForValidation()
    model = no_dropout_model()
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[swap, ens] if swap_first else [ens, swap])
    trainer.fit(model, BlobsDataModule(shuffle=False))
    top, snap = (next(m for m in ens.members if tag in m["tags"]) for tag in ("top_k", "epoch"))
    assert top["path"] != snap["path"] and top["step"] == snap["step"] == 8
    for k, v in model.state_dict().items():
        assert torch.equal(ens.inline[snap["path"]][k], v), k  # the raw weights
        if k.endswith("weight") or k.endswith("bias"):
            assert torch.equal(ens.inline[top["path"]][k], v * 0.5), k  # what was validated


class CyclicLR(torch.optim.lr_scheduler.LambdaLR):
    """A minimal warm-restart schedule exposing the cycle_ends() contract: cycles of 5 optimizer steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, period: int = 5) -> None:
        self.total, self.period = total, period
        super().__init__(optimizer, lambda s: 1.0 - (s % period) / period)

    def cycle_ends(self) -> list[int]:
        return list(range(self.period, self.total + 1, self.period))


class CyclicClassifier(TinyClassifier):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": CyclicLR(opt, total=16), "interval": "step"}}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_members_at_cycle_ends_of_the_schedule(tmp_path: Path, accumulate: int) -> None:
    ens = CheckpointEnsemble(at_cycle_ends=True, keep_inline=True)
    trainer = tiny_trainer(tmp_path, max_epochs=2 * accumulate, callbacks=[ens], accumulate_grad_batches=accumulate)
    trainer.fit(CyclicClassifier(), BlobsDataModule(shuffle=False))
    assert [m["step"] for m in ens.members] == [5, 10, 15]
    assert all(p.startswith("inline:") for p in ens.member_paths()) and not (tmp_path / "ensemble").exists()
    with pytest.raises(ValueError, match="cycle_ends"):
        tiny_trainer(tmp_path, max_epochs=1, callbacks=[CheckpointEnsemble(at_cycle_ends=True)]).fit(
            TinyClassifier(), BlobsDataModule()
        )


def test_any_lightning_module_boring_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    ens = CheckpointEnsemble(every_n_epochs=1, keep_inline=True)
    model = BoringModel()
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
                           callbacks=[ens])
    trainer.fit(model)
    assert len(ens.members) == 2
    assert ens.predict_proba(torch.randn(3, 32), model).shape == (3, 2)
    with caplog.at_level("WARNING", logger="lit_tricks.callbacks.ensemble"):
        results = trainer.test(model, verbose=False)[0]
    assert "test/acc_ensemble" not in results  # batches are not (x, y): skipped, with a warning
    assert "not (x, y" in caplog.text


def test_checkpoint_paths_and_soup_with_bn_recalibration(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        ckpt = ModelCheckpoint(dirpath=tmp_path / f"job{seed}", save_last=True)
        tiny_trainer(tmp_path / f"job{seed}", max_epochs=1, callbacks=[ckpt]).fit(
            no_dropout_model(seed), BlobsDataModule(shuffle=False)
        )
        paths.append(str(tmp_path / f"job{seed}" / "last.ckpt"))
    ens = CheckpointEnsemble(checkpoint_paths=paths, combine="vote")
    model = no_dropout_model(5)
    results = tiny_trainer(tmp_path, callbacks=[ens]).test(model, BlobsDataModule(shuffle=False), verbose=False)[0]
    assert "test/acc_ensemble" in results
    sds = ens.member_state_dicts()
    dm = BlobsDataModule(shuffle=False)
    dm.setup()
    soup = ens.average_weights(model, dm.train_dataloader())
    torch.testing.assert_close(soup.net[0].weight, (sds[0]["net.0.weight"] + sds[1]["net.0.weight"]) / 2)
    with torch.no_grad():
        h = soup.net[0](dm.train_set.tensors[0])
    torch.testing.assert_close(soup.net[1].running_mean, h.mean(0), rtol=1e-4, atol=1e-5)


def test_greedy_soup_equals_a_hand_written_greedy_loop_with_bn_recalibrated(tmp_path: Path) -> None:
    from torch.optim.swa_utils import update_bn

    dm = BlobsDataModule(shuffle=False)
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.02)
    tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(model, datamodule=dm)
    g = torch.Generator().manual_seed(0)  # members: the weights plus noise (averaging cancels it; one is far off)
    paths = []
    for i, sigma in enumerate((0.5, 0.5, 4.0, 0.5, 0.5)):
        sd = {k: v + sigma * torch.randn(v.shape, generator=g) if k.endswith(("weight", "bias")) else v
              for k, v in model.state_dict().items()}
        torch.save({"state_dict": sd}, tmp_path / f"member{i}.ckpt")
        paths.append(str(tmp_path / f"member{i}.ckpt"))
    ens = CheckpointEnsemble(checkpoint_paths=paths)
    states = ens.member_state_dicts()

    def nll(m: torch.nn.Module) -> float:  # held-out NLL: lower is better
        with torch.no_grad():
            return float(torch.cat([torch.nn.functional.cross_entropy(m(x).double(), y, reduction="none")
                                    for x, y in dm.val_dataloader()]).mean())

    def acc(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.cat([m(x).argmax(-1) == y for x, y in dm.val_dataloader()]).double().mean())

    def held_out(sd: dict[str, torch.Tensor], metric: Any) -> float:  # torch's update_bn, then the metric on val
        m = TinyClassifier()
        m.load_state_dict(sd)
        update_bn(dm.train_dataloader(), m)
        return float(metric(m.eval()))

    def mean(members: list[int]) -> dict[str, torch.Tensor]:
        return {k: (sum(states[j][k].double() for j in members) / len(members)).to(v.dtype)
                if v.is_floating_point() else v for k, v in states[members[0]].items()}

    def hand_written(metric: Any, sign: float) -> tuple[list[int], float]:  # the paper's Recipe 1, written out
        scores = [held_out(sd, metric) for sd in states]
        order = sorted(range(5), key=lambda i: sign * scores[i])
        chosen, best = [order[0]], scores[order[0]]
        for i in order[1:]:
            if sign * (s := held_out(mean([*chosen, i]), metric)) < sign * best:
                chosen, best = [*chosen, i], s
        return chosen, best

    soup, result = ens.greedy_soup(model, dm.val_dataloader(), dm.train_dataloader(), score=nll, mode="min")
    chosen, best = hand_written(nll, 1.0)
    assert result.members == chosen and result.score == pytest.approx(best, rel=1e-5)
    assert 1 < len(chosen) < 5 and 2 not in chosen  # some joined, some did not; the far-off member never
    assert [i for i, _, added in result.trace if added] == chosen[1:] and len(result.trace) == 4
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(soup.net[0].weight, mean(chosen)["net.0.weight"], rtol=4 * eps, atol=4 * eps)
    with torch.no_grad():  # BatchNorm recalibrated on the train split for the soup chosen
        h = soup.net[0](torch.cat([x for x, _ in dm.train_dataloader()]))
    torch.testing.assert_close(soup.net[1].running_mean, h.mean(0), rtol=1e-4, atol=1e-5)
    assert not soup.training and soup is not model
    _, by_accuracy = ens.greedy_soup(model, dm.val_dataloader(), dm.train_dataloader())  # default: top-1 accuracy
    assert (by_accuracy.members, by_accuracy.score) == hand_written(acc, -1.0)
    # members of another architecture: refused in one line
    torch.save({"state_dict": TinyClassifier(hidden=8).state_dict()}, tmp_path / "small.ckpt")
    mixed = CheckpointEnsemble(checkpoint_paths=[paths[0], str(tmp_path / "small.ckpt")])
    with pytest.raises(ValueError, match="different architectures") as err:
        mixed.greedy_soup(model, dm.val_dataloader(), dm.train_dataloader())
    assert "\n" not in str(err.value)


def test_test_with_best_ckpt_keeps_the_full_member_list(tmp_path: Path) -> None:
    ens = CheckpointEnsemble(every_n_epochs=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=1)
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[ens, ckpt])
    trainer.fit(no_dropout_model(), BlobsDataModule(shuffle=False))
    trainer.test(ckpt_path="best", datamodule=BlobsDataModule(shuffle=False), verbose=False)
    assert len(ens.members) == 3


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[TinyClassifier, CheckpointEnsemble]:
        model = no_dropout_model()
        ens = CheckpointEnsemble(every_n_epochs=2, top_k=2, monitor="val/acc", mode="max", dirpath=str(root / "ens"))
        ckpt = ModelCheckpoint(dirpath=root, save_last=True)
        trainer = tiny_trainer(root, max_epochs=max_epochs, callbacks=[ens, ckpt])
        trainer.fit(model, BlobsDataModule(shuffle=False), ckpt_path=ckpt_path)
        return model, ens

    full_model, full_ens = run(tmp_path / "full", 5)
    run(tmp_path / "part", 3)
    last = tmp_path / "part" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert any(k.startswith("CheckpointEnsemble") for k in state["callbacks"])
    model, ens = run(tmp_path / "part", 5, ckpt_path=str(last))
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name

    def strip(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**m, "path": Path(m["path"]).name} for m in members]

    assert strip(ens.members) == strip(full_ens.members)
    for a_sd, b_sd in zip(full_ens.member_state_dicts(), ens.member_state_dicts()):
        assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
    x = val_x()
    assert torch.equal(full_ens.predict_proba(x, full_model), ens.predict_proba(x, model))


def test_resnet18_32x32_smoke(tmp_path: Path) -> None:
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    class ResNetModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test/acc", (self(batch[0]).argmax(-1) == batch[1]).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    loader = DataLoader(data, batch_size=4)
    ens, clip = CheckpointEnsemble(every_n_epochs=1), GradientClipping("agc")
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[ens, clip])
    module = ResNetModule()
    trainer.fit(module, loader)
    results = trainer.test(module, loader, verbose=False)[0]
    assert len(ens.members) == 2 and clip.steps == 4
    assert 0.0 <= results["test/acc_ensemble"] <= 1.0
    assert ens.predict_proba(data.tensors[0][:2], module).shape == (2, 10)


DDP_SCRIPT = """
import datetime, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
import lightning.pytorch as pl
from lit_tricks.trainers.strategies import ddp_strategy
from lit_tricks.callbacks.ema import EMAWeights
from lit_tricks.callbacks.ensemble import CheckpointEnsemble
from tests.helpers.tiny import BlobsDataModule, TinyClassifier

class RankNoisyClassifier(TinyClassifier):
    # logs a rank-dependent val/loss without sync_dist: rank 0's top-k decision must win everywhere
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/noisy", self.global_rank * 10.0 + float(self.current_epoch % 2), sync_dist=False)

pl.seed_everything(0)
ens = CheckpointEnsemble(every_n_epochs=2, top_k=1, monitor="val/noisy", dirpath={ens_dir!r})
ema = EMAWeights(decay=0.9, save_ema_checkpoint=False, apply_at_end=False)  # under plain ddp (spawn: test_ema_ddp)
trainer = pl.Trainer(accelerator="cpu", devices=2, max_epochs=3, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir={tmp!r},
                     callbacks=[ens, ema], strategy=ddp_strategy(timeout_s=60))
model = RankNoisyClassifier()
trainer.fit(model, BlobsDataModule(n=128))
x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
sds = ens.member_state_dicts()
torch.save({{"members": ens.members, "flat": [torch.cat([v.flatten().double() for v in sd.values()]) for sd in sds],
             "probs": ens.predict_proba(x, model),
             "ema": torch.cat([v.flatten().double() for v in ema.ema_state_dict.values()])}},
           {tmp!r} + f"/rank{{trainer.global_rank}}.pt")
"""


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_ddp_members_identical_on_both_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ddp_ensemble.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), ens_dir=str(tmp_path / "ens"),
                                                        tmp=str(tmp_path))))
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["members"] == r1["members"]
    # epoch 1 (every_n_epochs=2) and the top-1 of rank 0's val/noisy (0.0 at epochs 0 and 2: the first, epoch 0)
    assert sorted(m["epoch"] for m in r0["members"]) == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(r0["flat"], r1["flat"]))
    assert torch.equal(r0["probs"], r1["probs"])
    assert torch.equal(r0["ema"], r1["ema"])  # EMA weights identical on both ranks under ddp too
    assert sorted(os.listdir(tmp_path / "ens")) == sorted(Path(m["path"]).name for m in r0["members"])


def test_state_dict_roundtrip_and_state_key() -> None:
    ens = CheckpointEnsemble(checkpoint_paths=["a.ckpt"], every_n_epochs=2)
    ens.members.append({"path": "inline:m", "score": 0.5, "epoch": 1, "step": 10, "tags": ["epoch"]})
    ens.inline["inline:m"] = {"w": torch.arange(3.0)}
    other = CheckpointEnsemble(every_n_epochs=2)
    other.load_state_dict(ens.state_dict())
    assert other.members == ens.members
    assert torch.equal(other.inline["inline:m"]["w"], torch.arange(3.0))
    assert other.state_dict()["version"] == 1
    assert CheckpointEnsemble(every_n_epochs=1).state_key != CheckpointEnsemble(every_n_epochs=2).state_key
