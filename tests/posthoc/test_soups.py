"""Soups beside the ensemble on real members: the report's greedy soup equals a hand-written greedy loop over the
same held-out scores, the uniform soup and the prediction ensemble equal hand-made ones (torch's ``update_bn`` for
BatchNorm); the ensemble CLI reports them for one run's snapshot members and for a sweep's members, and refuses
members of different architectures or initializations in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.optim.swa_utils import update_bn

from lit_tricks.callbacks import CheckpointEnsemble
from lit_tricks.cli.ensemble import main
from lit_tricks.functional.ensemble import average_state_dicts
from lit_tricks.posthoc.evaluate import evaluate_weights, load_state, rebuild_run
from lit_tricks.posthoc.soup import run_members, soup_report
from lit_tricks.run import train
from lit_tricks.sweeps.ensemble import ensemble_members
from lit_tricks.sweeps.report import build_report
from tests.helpers.tiny import BlobsDataModule, TinyClassifier, tiny_trainer

CONF = Path(__file__).resolve().parents[2] / "conf"


def _logits(state: dict[str, torch.Tensor], dm: BlobsDataModule, split: str) -> torch.Tensor:
    model = TinyClassifier()
    model.load_state_dict(state)
    update_bn(dm.train_dataloader(), model)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in getattr(dm, f"{split}_dataloader")()])


def test_report_matches_hand_made_soups_and_ensemble(tmp_path: Path) -> None:
    dm = BlobsDataModule(shuffle=False)
    torch.manual_seed(0)
    trainer = tiny_trainer(tmp_path, max_epochs=5, limit_val_batches=0,
                           callbacks=[CheckpointEnsemble(every_n_epochs=1, dirpath=str(tmp_path / "m"))])
    module = TinyClassifier(lr=0.3)
    trainer.fit(module, datamodule=dm)
    members = run_members(tmp_path)
    assert len(members) == 5
    result = soup_report(members, module, dm, out_dir=tmp_path / "out")
    names = [n for n, _ in members]
    states = [sd for _, sd in members]

    def held_out(sd: dict[str, torch.Tensor]) -> float:
        return evaluate_weights(module, sd, {"val": dm.val_dataloader()}, dm.train_dataloader())[0]["val/acc"]

    scores = [held_out(sd) for sd in states]  # the hand-written greedy loop (Wortsman et al. 2022, Recipe 1)
    order = sorted(range(5), key=lambda i: -scores[i])
    soup, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        s = held_out(average_state_dicts([states[j] for j in [*soup, i]]))
        if s > best:
            soup, best = [*soup, i], s
    assert result["greedy_members"] == [names[i] for i in soup]
    rows = {r["what"].split(" (")[0]: r for r in result["rows"]}
    assert rows["greedy soup"]["val/acc"] == pytest.approx(best) and best >= rows["best member"]["val/acc"]
    uniform = evaluate_weights(module, average_state_dicts(states), {"test": dm.test_dataloader()},
                               dm.train_dataloader())[0]
    assert rows["uniform soup"]["test/acc"] == uniform["test/acc"]
    y = torch.cat([y for _, y in dm.test_dataloader()])
    probs = torch.stack([_logits(sd, dm, "test").softmax(-1) for sd in states]).mean(0)
    assert rows["prediction ensemble"]["test/acc"] == pytest.approx(float((probs.argmax(-1) == y).float().mean()))
    assert json.loads((tmp_path / "out" / "soup.json").read_text())["rows"] == result["rows"]
    other = TinyClassifier(hidden=8).state_dict()
    with pytest.raises(ValueError, match="different architectures") as err:
        soup_report([*members, ("small", other)], module, dm)
    assert "\n" not in str(err.value)


def _job(sweep: Path, num: int, *overrides: str) -> Path:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "trainer.max_epochs=2", "trainer.limit_train_batches=3", "logger=none", "seed=5",
            f"paths.output_dir={sweep / str(num)}", f"paths.log_dir={sweep}", *overrides])
    train(cfg)
    return sweep / str(num)


@pytest.mark.timeout(300)
def test_ensemble_cli_soups_a_run_and_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    run = _job(sweep, 0, "optimizer.lr=0.05", "callbacks=[default,checkpoint_ensemble]")
    _job(sweep, 1, "optimizer.lr=0.1")
    assert main([str(run), "--soup"]) == 0  # one run: its two snapshot members
    out = capsys.readouterr().out
    assert "greedy soup" in out and "prediction ensemble (2, mean_prob)" in out and (run / "soup" / "soup.md").is_file()
    assert main([str(sweep), "--soup", "--top-k", "2"]) == 0  # the sweep: the best checkpoints of both jobs
    result = json.loads((sweep / "soup.json").read_text())
    assert sorted(m["name"] for m in result["members"]) == ["job 0", "job 1"]
    # the sweep's greedy soup == a hand-written greedy loop over the same held-out scores (torch's update_bn)
    jobs = ensemble_members(build_report(sweep), 2)
    _, dm, module = rebuild_run(jobs[0].dir)
    states = [load_state(str(j.best_ckpt)) for j in jobs]

    def val_acc(sd: dict[str, torch.Tensor]) -> float:
        module.load_state_dict(sd)
        update_bn(dm.train_dataloader(), module)
        module.eval()
        with torch.no_grad():
            return float(torch.cat([module(x).argmax(-1) == y for x, y, *_ in dm.val_dataloader()]).double().mean())

    scores = [val_acc(sd) for sd in states]
    order = sorted(range(2), key=lambda i: -scores[i])
    soup, best = [order[0]], scores[order[0]]
    if (both := val_acc(average_state_dicts(states))) > best:
        soup, best = [*soup, order[1]], both
    assert result["greedy_members"] == [f"job {jobs[i].num}" for i in soup]
    rows = {r["what"].split(" (")[0]: r for r in result["rows"]}
    assert rows["greedy soup"]["val/acc"] == pytest.approx(best) and rows["best member"]["val/acc"] == max(scores)
    assert set(rows) == {"best member", "uniform soup", "greedy soup", "prediction ensemble"}
    config = sweep / "1" / "config_resolved.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "seed": 6}))
    assert main([str(sweep), "--soup", "--top-k", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "share an initialization" in err and len(err.splitlines()) == 1
