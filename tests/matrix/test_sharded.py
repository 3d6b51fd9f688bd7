"""FSDP2 on 2 CPU ranks (``ModelParallelStrategy``, gloo, 60 s process-group timeout): every stateful callback
(PostHocEMA too) in one fit, a SIGTERM-and-resume in each checkpoint mode, Lightning's own clipping, and resumes across
world sizes (1 -> 2 and 2 -> 1), from two launches of tests/matrix/sharded_worker.py and one unsharded run in this
process.

Oracles: the hand-written EMA and power-function EMA recurrences over the gathered weights; the unsharded
single-process run of the same data (batch 16 = the union of the two ranks' batches of 8);
``torch.nn.utils.clip_grad_norm_`` on the gathered gradients and Lightning's ``gradient_clip_val``; the uninterrupted
run, bit for bit; the checkpoint contents read offline
(``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_tricks.callbacks.posthoc_ema import list_snapshots
from lit_tricks.fault.resume import checkpoint_is_intact, find_resume_checkpoint
from lit_tricks.functional.clip import adaptive_clip_grad_
from tests.fault.battery.conftest import differences
from tests.matrix import sharded_worker as W
from tests.matrix.cells import cell

pytestmark = [pytest.mark.slow, pytest.mark.ddp, pytest.mark.timeout(600)]
WORKER = Path(W.__file__)
EPS = torch.finfo(torch.float32).eps
STEP12 = "epoch=1-step=12.ckpt"


def _launch(root: Path, devices: int, phases: str, **paths: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK",
                                                            "WORLD_SIZE", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    extra = [a for k, v in paths.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.run([sys.executable, str(WORKER), "--root", str(root), "--devices", str(devices), "--phases",
                           phases, *extra], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"worker {phases} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fsdp2")
    single = W.run_single(root / "single")
    _launch(root, 2, "ref,term_dir,term_full,lightning_clip,from1,bf16,norms",
            from_file=root / "single" / "checkpoints" / STEP12)
    _launch(root, 1, "to1", from_dir=root / "ref" / "checkpoints" / STEP12,
            from_file=root / "term_full" / "checkpoints" / STEP12)
    out: dict[str, Any] = {"root": root, "single": single}
    for phase in ("ref", "term_dir", "term_full", "lightning_clip", "from1", "bf16", "norms"):
        out[phase] = [torch.load(root / f"{phase}_rank{r}.pt", weights_only=False) for r in (0, 1)]
    out["to1"] = torch.load(root / "to1_rank0.pt", weights_only=False)
    return out


def _steps(run: dict[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
    """The gathered weights after each optimizer step, by step count (0: before the first)."""
    weights = {0: next(r for r in run["records"] if r.get("step") == 0)["weights"]}
    weights.update({r["step_end"]: r["weights"] for r in run["records"] if "step_end" in r})
    return weights


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> list[str]:
    return [k for k in a if not torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol)]


def _consolidated(directory: Path, tmp: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(directory, tmp)
    return torch.load(tmp, weights_only=True)


def _recurrence(run: dict[str, Any], steps: int) -> tuple[dict[str, torch.Tensor], float]:
    """The EMA (decay 0.8 with warm-up, one update per step, the NaN step's too) over the gathered weights after
    ``steps`` steps, in float64, and its tolerance: 4 float32 ulps of the magnitude per update."""
    weights = _steps(run)
    ema = {k: v.double() for k, v in weights[0].items()}
    for t in range(steps):
        d = min(0.8, (1 + t) / (10 + t))
        ema = {k: d * v + (1 - d) * weights[t + 1][k].double() for k, v in ema.items()}
    return ema, steps * 4 * EPS * max(float(v.abs().max()) for v in ema.values())


def _torch_clip(grads: dict[str, torch.Tensor], max_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``torch.nn.utils.clip_grad_norm_`` on parameters holding copies of ``grads``: (norm, clipped gradients)."""
    params = {k: torch.nn.Parameter(torch.zeros_like(g)) for k, g in grads.items()}
    for k, p in params.items():
        p.grad = grads[k].clone()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    return norm, {k: p.grad for k, p in params.items()}  # type: ignore[misc]


@cell("EMAWeights", "sharded")
def test_sharded_ema_is_the_recurrence_the_single_process_run_and_resumes(runs: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    ref, single = runs["ref"][0], runs["single"]
    weights = _steps(ref)
    ema, tolerance = _recurrence(ref, ref["global_step"])
    assert ref["num_updates"] == 18 and not _close(ref["ema"], ema, tolerance)
    assert differences(runs["ref"][0]["ema"], runs["ref"][1]["ema"]) == []  # gathered alike on both ranks
    # the unsharded run: its weights differ from the sharded ones by reduction order only; an EMA is a convex
    # combination of the weights, so the EMAs differ by at most that much
    drift = max(float((a - _steps(single)[t][k]).abs().max()) for t, w in weights.items() for k, a in w.items())
    assert drift < 1e-4 and not _close(ref["ema"], single["ema"], drift + tolerance)
    # the twin of the distributed checkpoint: a directory of EMA shards, consolidated offline into a state dict
    twin = _consolidated(runs["root"] / "ref" / "checkpoints" / "ema-last.ckpt", tmp_path / "twin.pt")
    assert differences(twin["state_dict"], ref["ema"]) == []
    assert not (runs["root"] / "ref" / "checkpoints" / "ema-epoch=0-step=6.ckpt").exists()  # removed with its ckpt
    # the twin of the full-file checkpoint loads into the unsharded model
    file_twin = torch.load(runs["root"] / "term_full" / "checkpoints" / "ema-last.ckpt", weights_only=True)
    W.Net().load_state_dict(file_twin["state_dict"])
    assert differences(file_twin["state_dict"], runs["term_full"][0]["ema"]) == []


def _nan_safe(obj: Any) -> Any:
    """``obj`` with NaN entries of float tensors replaced by a sentinel (NaN != NaN in ``torch.equal``)."""
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return torch.nan_to_num(obj, nan=-123456.0, posinf=float("inf"), neginf=float("-inf"))
    if isinstance(obj, dict):
        return {k: _nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_safe(v) for v in obj]
    return obj


def _resumed_equals_reference(runs: dict[str, Any], phase: str) -> None:
    for rank in (0, 1):
        ref, resumed = runs["ref"][rank], runs[phase][rank]
        assert Path(resumed["resumed_from"]).name == "last-preempted.ckpt"
        keys = ("global_step", "weights", "ema", "num_updates", "local_optimizer", "members", "member_states",
                "states", "es", "posthoc")
        assert [d for k in keys for d in differences(_nan_safe(ref[k]), _nan_safe(resumed[k]), k)] == []


@cell("Preemption", "sharded")
def test_sharded_sigterm_checkpoint_resume_is_bit_exact_in_both_checkpoint_modes(runs: dict[str, Any]) -> None:
    root = runs["root"]
    assert (root / "term_dir" / "checkpoints" / "last-preempted.ckpt" / "meta.pt").is_file()  # a directory of shards
    assert (root / "term_dir" / "checkpoints" / "last-preempted.ckpt" / "ema" / ".metadata").is_file()
    assert (root / "term_full" / "checkpoints" / "last-preempted.ckpt").is_file()  # one file
    _resumed_equals_reference(runs, "term_dir")
    _resumed_equals_reference(runs, "term_full")
    # PostHocEMA: its shards in the directory, its snapshots (some written before the SIGTERM) bit for bit
    assert len(list((root / "term_dir" / "checkpoints" / "last-preempted.ckpt").glob("posthoc_ema-*/.metadata"))) == 1
    ref = _snapshots(root / "ref" / "posthoc")
    assert differences(ref, _snapshots(root / "term_dir" / "posthoc")) == []
    assert differences(ref, _snapshots(root / "term_full" / "posthoc")) == []


@cell("RNGState", "sharded")
def test_sharded_rng_states_per_rank_resume(runs: dict[str, Any]) -> None:
    for phase in ("term_dir", "term_full"):  # each rank's states, gathered into the checkpoint and back
        per_rank = runs[phase][0]["states"]["RNGState"]["per_rank"]
        assert len(per_rank) == 2
        assert differences(runs["ref"][1]["states"]["RNGState"], runs[phase][1]["states"]["RNGState"]) == []


@cell("GradientClipping", "sharded")
def test_sharded_clipping_uses_the_global_norm_like_torch_and_lightning(runs: dict[str, Any]) -> None:
    ref = runs["ref"][0]
    probes = [r for r in ref["records"] if "step" in r]
    for pre, post in zip(probes, ref["post"]):
        grads = pre["grads"]
        scale = max(float(g.abs().max()) for g in grads.values())
        norm, clipped = _torch_clip(grads, W.MAX_NORM)
        assert not _close(post["grads"], clipped, 8 * EPS * scale)  # mode norm, the callback itself
        assert abs(float(pre["auto"]["norm"]) - float(norm)) <= 8 * EPS * float(norm)
        # value: local clamping
        clamped = {k: g.clamp(-W.MAX_VALUE, W.MAX_VALUE) for k, g in grads.items()}
        assert differences(pre["value"]["grads"], clamped) == []
        # agc: unit norms completed across the shards = the unsharded rule on the gathered tensors
        params = {k: torch.nn.Parameter(w.clone()) for k, w in pre["weights"].items()}
        for k, p in params.items():
            p.grad = grads[k].clone()
        adaptive_clip_grad_(list(params.values()), W.AGC)
        assert not _close(pre["agc"]["grads"], {k: p.grad for k, p in params.items()}, 8 * EPS * scale)
    # auto: the history holds the global norms; the threshold is their median
    norms = torch.stack([torch.nn.utils.get_total_norm(list(p["grads"].values())) for p in probes])
    last = probes[-1]
    assert torch.allclose(last["auto"]["history"], norms, rtol=8 * EPS, atol=0)
    _, expected = _torch_clip(last["grads"], float(torch.quantile(norms, 0.5)))
    assert not _close(last["auto"]["grads"], expected, 8 * EPS * max(float(g.abs().max()) for g in expected.values()))
    # Lightning's own gradient_clip_val under ModelParallelStrategy: the same weights after the first two steps
    ours, lightning = _steps(ref), runs["lightning_clip"][0]["weights"]
    magnitude = max(float(w.abs().max()) for w in ours[1].values())
    assert not _close(ours[1], lightning[0], 64 * EPS * magnitude) and not _close(ours[2], lightning[1],
                                                                                  64 * EPS * magnitude)
    history = ref["states"]["GradientClipping"]["norm_history"]
    assert type(history) is torch.Tensor and history.shape == (1000,)  # statistics stay plain tensors


def _agc(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The unsharded AGC rule (the oracle of the sharded one) on copies of the full tensors: the clipped gradients."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    adaptive_clip_grad_(params, W.AGC)
    return [p.grad for p in params]  # type: ignore[misc]


def test_sharded_norms_and_clipping_keep_float64_like_torch_on_the_gathered_tensors(runs: dict[str, Any]) -> None:
    """Global norms (p = 1, 2, inf) of DTensor shards mixed with plain tensors, a rank holding no rows among them:
    the dtype and the value of ``torch.nn.utils.get_total_norm`` on the gathered tensors (float64 when any tensor is;
    16-bit: float32, as the unsharded ``grad_norm``), the same on both ranks; clipping (``norm``, ``agc``) acts as
    torch's ``clip_grad_norm_`` / the unsharded rule on the gathered tensors, to the precision of each dtype."""
    for case in W.NORM_CASES:
        rank0, rank1 = (runs["norms"][r][case] for r in (0, 1))
        grads, weights = rank0["grads"], rank0["weights"]
        wide = max((g.dtype for g in grads), key=lambda d: torch.finfo(d).bits)
        work = wide if torch.finfo(wide).bits >= 32 else torch.float32  # the dtype ours computes in
        narrow = min((g.dtype for g in grads), key=lambda d: torch.finfo(d).bits)
        for p in W.NORM_TYPES:
            expected = torch.nn.utils.get_total_norm(grads, p)
            # per-shard norms rounded to the narrowest dtype, summed over ~20 entries in the working dtype
            tolerance = (4 * torch.finfo(narrow).eps + 32 * torch.finfo(work).eps) * float(expected)
            assert 0 < float(expected) < float("inf"), (case, p)
            for kind in ("global", "grad_norm"):
                got = rank0[p][kind]
                assert got.dtype == work and torch.equal(got, rank1[p][kind]), (case, p, kind, got.dtype)
                assert abs(float(got) - float(expected)) <= tolerance, (case, p, kind, float(got), float(expected))
            assert torch.equal(rank0[p]["norm"]["norm"], rank0[p]["grad_norm"])  # the callback's returned norm
            # mode norm: torch's clip_grad_norm_ on the gathered gradients
            params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
            for param, g in zip(params, grads):
                param.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(params, W.MAX_NORM, p)
            for ours, theirs in zip(rank0[p]["norm"]["grads"], (q.grad for q in params)):
                assert theirs is not None and ours.dtype == theirs.dtype
                bound = 8 * torch.finfo(narrow).eps * float(theirs.abs().max())
                assert torch.allclose(ours.double(), theirs.double(), rtol=0, atol=bound), (case, p)
            # mode agc: the unsharded rule on the gathered tensors (16-bit weights: another rounding of the bound)
            agc = rank0[p]["agc"]["grads"]
            for ours, theirs in zip(agc, _agc(weights, grads)):
                bound = 8 * torch.finfo(ours.dtype).eps * float(theirs.abs().max())
                assert torch.allclose(ours.double(), theirs.double(), rtol=0, atol=bound), (case, p)
            assert all(not torch.equal(a, g) for a, g in zip(agc, grads))  # every tensor had units clipped


@cell("NaNGuard", "sharded")
def test_sharded_nan_on_one_rank_skips_the_step_on_both(runs: dict[str, Any]) -> None:
    for rank in (0, 1):
        assert runs["ref"][rank]["states"]["NaNGuard"]["bad_steps"] == [W.NAN_STEP]
    weights = _steps(runs["ref"][0])
    assert differences(weights[W.NAN_STEP], weights[W.NAN_STEP + 1]) == []  # the step's update was dropped
    assert runs["single"]["states"]["NaNGuard"]["bad_steps"] == [W.NAN_STEP]


@cell("CheckpointEnsemble", "sharded")
def test_sharded_ensemble_members_are_full_state_dicts_usable_after_fit(runs: dict[str, Any]) -> None:
    ref = runs["ref"][0]
    weights = _steps(ref)
    assert ref["members"] == [f"<dir>/member-epoch00{e}-step0000{s:02d}.pt" for e, s in ((0, 6), (1, 12), (2, 18))]
    for member, step in zip(ref["member_states"], (6, 12, 18)):
        assert differences(member, weights[step]) == []  # gathered: full shapes, the weights of that step
    from lit_tricks.functional.ensemble_members import EnsembleMembers

    store = EnsembleMembers()
    store.records = [{"path": f"inline:{i}", "score": None, "epoch": i, "step": -1, "tags": ["epoch"]}
                     for i in range(3)]
    store.inline = {f"inline:{i}": sd for i, sd in enumerate(ref["member_states"])}
    x = W.Blobs().x[:16]
    probs = store.ensemble(W.Net(), "mean_prob")(x)
    nets = [W.Net() for _ in range(3)]
    for net, sd in zip(nets, ref["member_states"]):
        net.load_state_dict(sd)
    expected = torch.stack([n.eval()(x).softmax(-1) for n in nets]).mean(0)
    assert torch.allclose(probs, expected, rtol=0, atol=4 * EPS)


@cell("EarlyStopping", "sharded")
def test_sharded_early_stopping_restores_the_gathered_best_weights(runs: dict[str, Any]) -> None:
    ref = runs["ref"][0]
    best = ref["es"]["best_weights"]
    ema, tolerance = _recurrence(ref, 6 * (ref["es"]["best_epoch"] + 1))
    assert not _close(best, ema, tolerance)  # full tensors: the weights validated at the best epoch (the EMA's)
    assert differences(ref["weights"], best) == []  # restored into the shards at fit end


@cell("EMAWeights", "sharded")
def test_sharded_resume_reshards_from_one_rank_to_two_and_two_to_one(runs: dict[str, Any], tmp_path: Path) -> None:
    root = runs["root"]
    # 1 -> 2: the unsharded run's full file, cut into each rank's shards
    saved = torch.load(root / "single" / "checkpoints" / STEP12, weights_only=True)
    ema_state = next(v for k, v in saved["callbacks"].items() if k.startswith("EMAWeights"))
    for rank in (0, 1):
        start = runs["from1"][rank]["start"]
        assert start["step"] == 12 and start["num_updates"] == 12
        assert differences(start["weights"], saved["state_dict"]) == [] and differences(start["ema"],
                                                                                           ema_state["ema"]) == []
    assert runs["from1"][0]["global_step"] == 18
    # 2 -> 1, distributed checkpoint: the shards re-sharded by DCP (compared with the directory read offline)
    start = runs["to1"]["dir"]["start"]
    ckpt = root / "ref" / "checkpoints" / STEP12
    assert differences(start["weights"], _consolidated(ckpt, tmp_path / "w.pt")["state_dict"]) == []
    assert differences(start["ema"], _consolidated(ckpt / "ema", tmp_path / "e.pt")["ema"]) == []
    assert differences(start["weights"], _steps(runs["ref"][0])[12]) == [] and start["num_updates"] == 12
    # 2 -> 1, full file
    saved = torch.load(root / "term_full" / "checkpoints" / STEP12, weights_only=True)
    ema_state = next(v for k, v in saved["callbacks"].items() if k.startswith("EMAWeights"))
    start = runs["to1"]["file"]["start"]
    assert differences(start["weights"], saved["state_dict"]) == []
    assert differences(start["ema"], ema_state["ema"]) == []
    assert runs["to1"]["dir"]["global_step"] == runs["to1"]["file"]["global_step"] == 18
    # the twin of a 2-rank distributed checkpoint, loaded as a model checkpoint by a 1-rank strategy: the EMA
    twin = _consolidated(root / "ref" / "checkpoints" / "ema-epoch=1-step=12.ckpt", tmp_path / "t.pt")["state_dict"]
    ema, tolerance = _recurrence(runs["ref"][0], 12)
    assert differences(runs["to1"]["twin_loaded"], twin) == [] and not _close(twin, ema, tolerance)
    # PostHocEMA: 1 -> 2 from the full file, 2 -> 1 from the shards (re-sharded by DCP) and from the full file
    def posthoc_saved(path: Path) -> list[dict[str, torch.Tensor]]:
        saved = torch.load(path, weights_only=True)["callbacks"]
        return next(v for k, v in saved.items() if k.startswith("PostHocEMA"))["profiles"]["ema"]

    for rank in (0, 1):
        start = runs["from1"][rank]["start"]["posthoc"]
        assert start["steps"] == 12 and start["sharded"]
        assert differences(start["profiles"], posthoc_saved(root / "single" / "checkpoints" / STEP12)) == []
    shards = next((root / "ref" / "checkpoints" / STEP12).glob("posthoc_ema-*"))
    consolidated = _consolidated(shards, tmp_path / "p.pt")
    assert differences(runs["to1"]["dir"]["start"]["posthoc"]["profiles"],
                       [consolidated["profile0"], consolidated["profile1"]]) == []
    assert differences(runs["to1"]["file"]["start"]["posthoc"]["profiles"],
                       posthoc_saved(root / "term_full" / "checkpoints" / STEP12)) == []
    assert runs["to1"]["dir"]["posthoc"]["steps"] == 18
    # TrickModule(shard="auto") shards every parameter under the same strategy
    assert runs["to1"]["trick"]["step"] == 2 and all(runs["to1"]["trick"]["sharded"])
    # through lit_tricks' model_parallel_strategy (trainer=fsdp_cpu): its directories are swapped in whole
    assert (root / "to1" / "trick" / "last.ckpt" / "meta.pt").is_file()
    assert not list((root / "to1" / "trick").glob(".tmp-*"))


def test_sharded_checkpoint_directories_are_found_and_checked_by_resume(runs: dict[str, Any]) -> None:
    root = runs["root"] / "ref"
    found = find_resume_checkpoint(root)
    assert found is not None and Path(found).is_dir() and Path(found).name in ("last.ckpt", "epoch=2-step=18.ckpt")
    assert not list(root.glob("checkpoints/.tmp-*"))  # every directory was swapped in whole
    shard = next((root / "checkpoints" / "last.ckpt").glob("__1_*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8])  # a truncated shard: resume skips it with a reason
    assert "truncated" in str(checkpoint_is_intact(root / "checkpoints" / "last.ckpt"))
    assert find_resume_checkpoint(root) == str(root / "checkpoints" / "epoch=2-step=18.ckpt")


@cell("EMAWeights", "low_precision")
def test_sharded_bf16_weights_keep_fp32_ema_shards_that_follow_the_fp32_recurrence(runs: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    run = runs["bf16"][0]
    assert run["weight_dtype"] == "torch.bfloat16" and run["sharded"] and run["dtypes"] == ["torch.float32"]
    weights = {0: next(r for r in run["records"] if r.get("step") == 0)["weights"]}
    weights.update({r["step_end"]: r["weights"] for r in run["records"] if "step_end" in r})
    ema = {k: v.double() for k, v in weights[0].items()}
    for t in range(8):
        ema = {k: 0.99 * v + 0.01 * weights[t + 1][k].double() for k, v in ema.items()}
    start = {k: v.double() for k, v in weights[0].items()}
    moved = sum(float((v - start[k]).norm()) for k, v in ema.items())
    magnitude = max(float(v.abs().max()) for v in ema.values())
    assert moved > 0 and not _close(run["ema"], ema, 8 * 4 * EPS * magnitude)  # fp32 accuracy, not bf16's
    twin = _consolidated(runs["root"] / "bf16" / "ema-last.ckpt", tmp_path / "twin.pt")["state_dict"]
    assert {str(v.dtype) for v in twin.values()} == {"torch.bfloat16"}  # the twin: the model's dtype
    assert differences(twin, {k: v.to(torch.bfloat16) for k, v in run["ema"].items()}) == []


def _snapshots(folder: Path) -> dict[int, dict[str, Any]]:
    return {step: torch.load(path, weights_only=True) for step, path in list_snapshots(folder)}


def _power_ema(weights: dict[int, dict[str, torch.Tensor]], gamma: float, steps: int) -> dict[str, torch.Tensor]:
    """The power-function EMA (EDM2 eq. 127, one update per step) of ``weights[1..steps]``, in float64."""
    ema: dict[str, torch.Tensor] = {}
    for t in range(1, steps + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = {k: beta * ema.get(k, torch.zeros(())) + (1 - beta) * w.double() for k, w in weights[t].items()}
    return ema


def test_sharded_posthoc_ema_snapshots_are_the_recurrence_and_the_single_process_runs(runs: dict[str, Any]) -> None:
    root, ref = runs["root"], runs["ref"][0]
    weights, single_weights = _steps(ref), _steps(runs["single"])
    snaps, single = _snapshots(root / "ref" / "posthoc"), _snapshots(root / "single" / "posthoc")
    assert sorted(snaps) == sorted(single) == [4, 8, 12, 16, 18]  # every 4 steps and the end
    assert ref["posthoc"]["sharded"] and ref["posthoc"]["dtypes"] == ["torch.float32"]
    for rank in (0, 1):  # the tracked shards, gathered on each rank, are the last snapshot
        assert runs["ref"][rank]["posthoc"]["steps"] == 18
        assert differences(runs["ref"][rank]["posthoc"]["profiles"], snaps[18]["ema"]) == []
    # the unsharded run's weights differ by reduction order only; a power EMA is a convex combination of them
    drift = max(float((a - single_weights[t][k]).abs().max()) for t, w in weights.items() for k, a in w.items())
    magnitude = max(float(w.abs().max()) for ws in weights.values() for w in ws.values())
    assert drift < 1e-4
    for step, snap in snaps.items():
        tolerance = step * 4 * EPS * magnitude  # 4 float32 ulps of the magnitude per update
        assert set(snap["ema"][0]) == set(weights[0]) and snap["buffers"] == {}
        for gamma, profile, unsharded in zip(snap["gammas"], snap["ema"], single[step]["ema"]):
            assert not _close(profile, _power_ema(weights, gamma, step), tolerance), (step, gamma)
            assert not _close(profile, unsharded, drift + tolerance), (step, gamma)


def test_sharded_posthoc_ema_snapshots_reconstruct_like_the_single_process_ones(runs: dict[str, Any]) -> None:
    from lit_tricks.functional.posthoc_ema import sigma_rel_to_gamma, solve_posthoc_coefficients
    from lit_tricks.posthoc.ema import reconstruct_posthoc_ema

    root = runs["root"]
    targets = [0.05, 0.07, 0.2]
    ours = reconstruct_posthoc_ema(root / "ref" / "posthoc", targets)
    theirs = reconstruct_posthoc_ema(root / "single" / "posthoc", targets)
    tracked = runs["ref"][0]["posthoc"]["profiles"][0]  # sigma_rel 0.05 is stored: the reconstruction is it
    assert all(float((ours[0][k] - t).norm() / t.norm()) < 1e-6 for k, t in tracked.items())
    snaps = _snapshots(root / "ref" / "posthoc")
    steps = [float(s) for s, snap in snaps.items() for _ in snap["gammas"]]
    gammas = [g for snap in snaps.values() for g in snap["gammas"]]
    x = solve_posthoc_coefficients(steps, gammas, [18.0] * 3, [sigma_rel_to_gamma(s) for s in targets])
    weights, single_weights = _steps(runs["ref"][0]), _steps(runs["single"])
    drift = max(float((a - single_weights[t][k]).abs().max()) for t, w in weights.items() for k, a in w.items())
    magnitude = max(float(w.abs().max()) for ws in weights.values() for w in ws.values())
    for j, (a, b) in enumerate(zip(ours, theirs)):  # linear in the snapshots, which differ by drift + rounding
        bound = float(x[:, j].abs().sum()) * (drift + 18 * 4 * EPS * magnitude) + 2 * EPS * magnitude
        assert not _close(a, b, bound), targets[j]
        W.Net().load_state_dict(a)  # full tensors: the unsharded model loads them


def test_sharded_bf16_posthoc_ema_keeps_fp32_shards_that_follow_the_fp32_recurrence(runs: dict[str, Any]) -> None:
    run = runs["bf16"][0]
    posthoc = run["posthoc"]
    assert run["weight_dtype"] == "torch.bfloat16" and posthoc["sharded"] and posthoc["dtypes"] == ["torch.float32"]
    weights = {0: next(r for r in run["records"] if r.get("step") == 0)["weights"]}
    weights.update({r["step_end"]: r["weights"] for r in run["records"] if "step_end" in r})
    snaps = _snapshots(runs["root"] / "bf16" / "posthoc")
    assert sorted(snaps) == [4, 8] and differences(snaps[8]["ema"], posthoc["profiles"]) == []
    magnitude = max(float(w.abs().max()) for ws in weights.values() for w in ws.values())
    for gamma, profile in zip(snaps[8]["gammas"], posthoc["profiles"]):
        assert {str(t.dtype) for t in profile.values()} == {"torch.float32"}
        expected = _power_ema(weights, gamma, 8)
        assert not _close(profile, expected, 8 * 4 * EPS * magnitude), gamma  # fp32 accuracy
        in_bf16: dict[str, torch.Tensor] = {}  # the same recurrence in a bf16 shadow: off by more than that
        for t in range(1, 9):
            beta = (1 - 1 / t) ** (gamma + 1)
            in_bf16 = {k: (beta * in_bf16.get(k, torch.zeros(())) + (1 - beta) * w.double()).bfloat16().double()
                       for k, w in weights[t].items()}
        assert _close(in_bf16, expected, 8 * 4 * EPS * magnitude)
