"""EMAWeights and CheckpointEnsemble match a wrapped model's tensors to a plain model's by the same rule."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lit_tricks.callbacks import CheckpointEnsemble, EMAWeights
from tests.helpers.tiny import TinyClassifier


class _Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule: the real net sits under ``_orig_mod``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._orig_mod = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self._orig_mod(x)
        return out


def _loaded_both_ways(state: dict[str, Tensor], target: nn.Module, tmp_path: Path) -> tuple[dict, dict]:
    ema = EMAWeights()
    ema.load_state_dict({"ema": dict(state)})
    ema._ensure(target)  # type: ignore[arg-type]
    path = tmp_path / "member.pt"
    torch.save(state, path)
    member = CheckpointEnsemble(checkpoint_paths=[str(path)]).members_as_modules(target)[0]
    return ema.ema_state_dict, member.state_dict()


def test_ema_and_ensemble_agree_on_wrapped_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TinyClassifier()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    # saved from a DDP-wrapped, compiled model: module.net._orig_mod.<...>
    wrapped_state = {"module." + k.replace("net.", "net._orig_mod.", 1): v.clone() for k, v in
                     source.state_dict().items()}
    plain_target = TinyClassifier()
    ema_sd, member_sd = _loaded_both_ways(wrapped_state, plain_target, tmp_path)
    expected = source.state_dict()
    assert set(member_sd) == set(expected)
    for k, v in expected.items():
        assert torch.equal(member_sd[k], v), k
        if k in ema_sd:
            assert torch.equal(ema_sd[k], v), k
    assert ema_sd and set(ema_sd) <= set(member_sd)

    # and the other way round: a plain state into a compiled model
    compiled_target = TinyClassifier()
    compiled_target.net = _Compiled(compiled_target.net)  # type: ignore[assignment]
    ema_sd, member_sd = _loaded_both_ways(source.state_dict(), compiled_target, tmp_path)
    assert all("_orig_mod" in k for k in member_sd if k.startswith("net."))
    for k, v in member_sd.items():
        plain_key = k.replace("net._orig_mod.", "net.", 1)
        assert torch.equal(v, expected[plain_key]), k
        if k in ema_sd:
            assert torch.equal(ema_sd[k], v), k
