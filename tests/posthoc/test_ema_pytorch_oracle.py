"""The reconstruction against an independent implementation: ema-pytorch's ``PostHocEMA`` (lucidrains, EDM2's
algorithms 2 and 3 redone in torch), on the same snapshot files; and its tracked ``KarrasEMA`` against ours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lit_tricks.functional.posthoc_ema import (
    PowerEMAProfiles,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
    synthesize,
)

ema_pytorch = pytest.importorskip("ema_pytorch")

SIGMA_RELS = (0.05, 0.10)


def _run_ema_pytorch(folder: Path, steps: int = 60, every: int = 6) -> tuple[nn.Module, object, list[dict]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))  # no buffers: ema-pytorch averages them
    theirs = ema_pytorch.PostHocEMA(model, sigma_rels=SIGMA_RELS, update_every=1, checkpoint_every_num_steps=every,
                                    checkpoint_folder=str(folder), checkpoint_dtype=torch.float32)
    weights = []
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        theirs.update()
    return model, theirs, weights


def _their_snapshots(folder: Path) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
    out = []
    for f in sorted(folder.glob("*.pt")):
        ind, step = map(int, f.stem.split("."))
        sd = torch.load(f, weights_only=True)
        out.append((step, ind, {k[len("ema_model."):]: v for k, v in sd.items() if k.startswith("ema_model.")}))
    return out


@pytest.mark.parametrize("sigma_rel", [0.03, 0.07, 0.15])
def test_reconstruction_matches_ema_pytorch_on_the_same_snapshots(tmp_path: Path, sigma_rel: float) -> None:
    _, theirs, _ = _run_ema_pytorch(tmp_path)
    synthesized = theirs.synthesize_ema_model(sigma_rel=sigma_rel)
    expected = dict(synthesized.ema_model.named_parameters())
    snaps = _their_snapshots(tmp_path)
    gammas = [sigma_rel_to_gamma(s) for s in SIGMA_RELS]
    last = max(s for s, _, _ in snaps)
    x = solve_posthoc_coefficients([s for s, _, _ in snaps], [gammas[i] for _, i, _ in snaps], [last],
                                   [sigma_rel_to_gamma(sigma_rel)], normalize=False)  # ema-pytorch does not normalize
    (ours,) = synthesize([sd for _, _, sd in snaps], x)
    # theirs sums in float32: its rounding is within a few eps32 per unit of sum |X|
    tol = 4 * torch.finfo(torch.float32).eps * float(x.abs().sum())
    for name, t in expected.items():
        assert float((ours[name] - t.detach()).norm() / t.norm()) < tol, name
    # EDM2's normalization moves the result by at most |1 - sum X| of it
    (normalized,) = synthesize([sd for _, _, sd in snaps], x / x.sum(0))
    drift = abs(1 - float(x.sum()))
    for name, t in expected.items():
        assert float((normalized[name] - t.detach()).norm() / t.norm()) <= 2 * drift + tol, name


def test_tracked_profiles_match_karras_ema_one_step_later(tmp_path: Path) -> None:
    """ema-pytorch's n-th update uses beta = (1 - 1/(n+1))^(gamma+1): its EMA after n updates is ours after the
    first weights were seen twice (n + 1 steps; beta = 0 then 2^-(gamma+1) on the same weights)."""
    _, theirs, weights = _run_ema_pytorch(tmp_path, steps=30, every=1000)
    ours = PowerEMAProfiles([sigma_rel_to_gamma(s) for s in SIGMA_RELS])
    ours.bind(list(weights[0].items()))
    for w in [weights[0], *weights]:
        ours.step(list(w.values()))
    for karras, profile in zip(theirs.ema_models, ours.profiles()):
        for name, t in karras.ema_model.named_parameters():
            torch.testing.assert_close(profile[name], t.detach(), rtol=1e-5, atol=1e-6)
