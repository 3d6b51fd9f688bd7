"""benchmarks/mnist1d_explore.py's cycle (snapshot) ensembles: the schedule, the snapshots and the ensemble metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from benchmarks import mnist1d_explore as ex


def _tiny_data(n: int = 100) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = torch.randn(n, ex.L, generator=g) + y[:, None].float() / 3
    return {"x": x, "y": y, "x_test": x[:20], "y_test": y[:20]}


def test_cycles_repeat_the_one_cycle_of_a_cycle_long_run() -> None:
    one = ex.recipe(steps=2000)  # oracle: the recorded one-cycle schedule of a run one cycle long
    three = ex.recipe(steps=6000, cycles=3)
    assert ex.cycle_ends(three) == [2000, 4000, 6000] and ex.cycle_ends(ex.TRICKS) == [6000]
    assert [ex.lr_factor(three, s) for s in range(6000)] == [ex.lr_factor(one, s % 2000) for s in range(6000)]
    uneven = ex.recipe(steps=10, cycles=3)  # the last cycle takes the remainder
    assert ex.cycle_ends(uneven) == [3, 6, 10]
    assert [ex.lr_factor(uneven, s) for s in range(6, 10)] == [ex.lr_factor(ex.recipe(steps=4), s) for s in range(4)]
    # one cycle is the closed form: cosine ramp over round(0.3 steps), then cosine to end_factor
    r = ex.TRICKS
    assert ex.lr_factor(r, 0) == r.start_factor and ex.lr_factor(r, 1800) == 1.0
    assert ex.lr_factor(r, 3900) == pytest.approx(r.end_factor + (1 - r.end_factor) / 2, rel=1e-12)
    # recorded keys unchanged: a BatchNorm after every conv (the default norm_layers) adds nothing to a key
    assert ex.TRICKS.key() == "steps=6000,dropout=0.0,shear=3.5,ema=0.999"
    first = dataclasses.replace(ex.TRICKS, norm_layers="0")
    assert first.key() == "steps=6000,norm_layers=0,dropout=0.0,shear=3.5,ema=0.999"
    assert first.group() != ex.TRICKS.group()  # other BatchNorm layers: another group
    assert three.group() != ex.recipe(steps=6000).group()


@pytest.mark.parametrize("cycles", [0, -1, 11])
def test_cycles_out_of_range_are_refused(cycles: int) -> None:
    with pytest.raises(ValueError, match=f"cycles={cycles}"):
        ex.recipe(steps=10, cycles=cycles)


@pytest.mark.timeout(60)
def test_snapshots_are_the_weights_of_runs_stopped_at_each_cycle_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot of 6 steps in 3 cycles keeps, after step 2, what a run of 2 steps ends with (same data order: one
    permutation of the 80 training samples covers both), and its last snapshot is its final raw and EMA weights."""
    seen: dict[int, dict[str, Any]] = {}

    def capture(slots: list[ex.Slot], p: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                bufs: dict[str, torch.Tensor], *args: Any) -> None:
        seen[slots[0].recipe.steps] = {"p": p, "ema": ema, "bufs": bufs, "snapshots": args[-1]}

    monkeypatch.setattr(ex, "evaluate", capture)
    data = _tiny_data()
    for r in (ex.recipe(steps=6, batch_size=10, cycles=3), ex.recipe(steps=2, batch_size=10)):
        ex.train_group([ex.Slot(r, 0, 0)], data)
    snaps, short, full = seen[6]["snapshots"], seen[2], seen[6]
    assert len(snaps) == 3 and len(short["snapshots"]) == 1
    for k in short["p"]:
        assert torch.equal(snaps[0].raw[k], short["p"][k].detach()) and torch.equal(snaps[0].ema[k], short["ema"][k])
        assert torch.equal(snaps[-1].raw[k], full["p"][k].detach()) and torch.equal(snaps[-1].ema[k], full["ema"][k])
        assert not torch.equal(snaps[0].raw[k], snaps[1].raw[k])  # copies, not views of the training tensors
    for k in short["bufs"]:
        assert torch.equal(snaps[0].bufs[k], short["bufs"][k]) and torch.equal(snaps[-1].bufs[k], full["bufs"][k])


@pytest.mark.timeout(60)
def test_ensemble_metrics_are_the_mean_softmax_of_the_snapshots() -> None:
    data = _tiny_data()
    slot = ex.Slot(ex.recipe(steps=6, batch_size=10, cycles=3), 0, 0)
    single = ex.Slot(ex.recipe(steps=6, batch_size=10), 0, 0)
    ex.train_group([slot], data)
    ex.train_group([single], data)
    for s in (slot, single):
        assert {"cyc_ens", "cyc_ens_tta2", "cyc_ens_raw", "cyc_ens_raw_tta2", "cyc_ens_nll"} <= set(s.result)
    # an ensemble of one snapshot is the final model: the same numbers as ema / raw
    assert single.result["cyc_ens"] == single.result["ema"] and single.result["cyc_ens_raw"] == single.result["raw"]
    assert single.result["cyc_ens_tta2"] == single.result["ema_tta2"]
    # oracle for the mean softmax: two random models as torch modules, probabilities averaged by hand
    torch.manual_seed(0)
    for norm in ("012", "0"):  # a BatchNorm after every conv; after the first only (norm_layers="0")
        params = [ex.init_params([seed], norm) for seed in (1, 2)]
        bufs = [{k: v + 0.1 * torch.rand_like(v) for k, v in ex.init_buffers(1, norm).items()} for _ in range(2)]
        assert sorted(k for k in params[0] if k.startswith("bn")) == sorted(f"bn{i}.{n}" for i in norm for n in "wb")
        x, y = data["x"][None, :30], data["y"][None, :30]
        probs = torch.zeros(30, 10, dtype=torch.float64)
        for p, b in zip(params, bufs):
            net = _module(p, b)
            for shift in range(-2, 3):
                probs += net(torch.roll(x[0], shift, -1)[:, None]).double().softmax(-1) / 10
        acc, nll = ex.ensemble_accuracy_and_nll(list(zip(params, bufs)), x, y, 2)
        eps = torch.finfo(torch.float32).eps
        assert float(acc[0]) == pytest.approx(float((probs.argmax(-1) == y[0]).double().mean()), rel=eps)
        assert float(nll[0]) == pytest.approx(float(-probs[torch.arange(30), y[0]].log().mean()), rel=100 * eps)


def _module(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Slot 0 of ``p`` as the paper's ConvBase with BatchNorm where ``p`` has one (torch modules, eval mode)."""
    layers: list[torch.nn.Module] = []
    for i, k in enumerate(ex.KERNELS):
        conv = torch.nn.Conv1d(1 if i == 0 else ex.C, ex.C, k, stride=2, padding=1)
        conv.load_state_dict({"weight": p[f"conv{i}.w"][0], "bias": p[f"conv{i}.b"][0]})
        layers.append(conv)
        if f"bn{i}.w" in p:
            bn = torch.nn.BatchNorm1d(ex.C)
            bn.load_state_dict({"weight": p[f"bn{i}.w"][0], "bias": p[f"bn{i}.b"][0],
                                "running_mean": b[f"bn{i}.mean"][0], "running_var": b[f"bn{i}.var"][0],
                                "num_batches_tracked": torch.tensor(0)})
            layers.append(bn)
        layers.append(torch.nn.ReLU())
    head = torch.nn.Linear(ex.C * 5, 10)
    head.load_state_dict({"weight": p["head.w"][0], "bias": p["head.b"][0]})
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), head).eval()
