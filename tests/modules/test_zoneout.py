"""Zoneout on a GRU's hidden state (``dropout_kind=zoneout``) against ``nn.GRU`` and a recurrence written with
``nn.GRUCell`` (Krueger et al., 2017: ``h_t = d_t h_{t-1} + (1 - d_t) GRU(x_t, h_{t-1})``; eval uses E[d_t] = p)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from lit_tricks.models import MLP, GRU1d
from lit_tricks.modules.trick_module import TrickModule
from lit_tricks.modules.zoneout import ZoneoutGRU, apply_zoneout


def _cell(gru: nn.GRU, suffix: str) -> nn.GRUCell:
    cell = nn.GRUCell(gru.input_size, gru.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(gru, name + suffix))
    return cell


def _oracle(gru: nn.GRU, x: Tensor, masks: Iterator[Tensor]) -> Tensor:
    """A 1-layer bidirectional batch-first GRU stepped with nn.GRUCell, zoned out with the given masks in order."""
    outs = []
    for direction, suffix in enumerate(("_l0", "_l0_reverse")):
        cell, h = _cell(gru, suffix), x.new_zeros(x.shape[0], gru.hidden_size)
        steps = list(range(x.shape[1]))
        seq: dict[int, Tensor] = {}
        for t in reversed(steps) if direction else steps:
            d = next(masks)
            h = d * h + (1 - d) * cell(x[:, t], h)
            seq[t] = h
        outs.append(torch.stack([seq[t] for t in steps], 1))
    return torch.cat(outs, -1)


def _gru() -> nn.GRU:
    torch.manual_seed(0)
    return nn.GRU(3, 4, batch_first=True, bidirectional=True)


def test_a_mask_of_zeros_is_the_plain_gru_for_any_layout() -> None:
    torch.manual_seed(0)
    for kwargs in ({"batch_first": True, "bidirectional": True}, {"num_layers": 2}, {"num_layers": 2, "bias": False}):
        gru = nn.GRU(3, 4, **kwargs)  # type: ignore[arg-type]
        zone = ZoneoutGRU.from_gru(gru, 0.5)
        assert list(zone.state_dict()) == list(gru.state_dict()) and zone.weight_hh_l0 is gru.weight_hh_l0
        zone.zoneout_mask = torch.zeros_like  # type: ignore[method-assign]
        x = torch.randn(5, 6, 3)
        for a, b in zip(zone(x), gru(x)):
            torch.testing.assert_close(a, b)
        for a, b in zip(zone(x[:, 0]), gru(x[:, 0])):  # unbatched
            torch.testing.assert_close(a, b)


def test_training_keeps_the_units_the_mask_picks_and_eval_mixes_with_p() -> None:
    gru, x = _gru(), torch.randn(2, 5, 3)
    zone = ZoneoutGRU.from_gru(gru, 0.3)
    drawn: list[Tensor] = []
    draw = zone.zoneout_mask

    def record(h: Tensor) -> Tensor:
        drawn.append(draw(h))
        return drawn[-1]

    zone.zoneout_mask = record  # type: ignore[method-assign]
    torch.manual_seed(1)
    out, _ = zone.train()(x)
    assert all(set(d.unique().tolist()) <= {0.0, 1.0} for d in drawn) and len(drawn) == 10
    torch.testing.assert_close(out, _oracle(gru, x, iter(drawn)))
    out_eval, _ = zone.eval()(x)
    torch.testing.assert_close(out_eval, _oracle(gru, x, iter([torch.full((2, 4), 0.3)] * 10)))


def test_the_mask_keeps_a_unit_with_probability_p() -> None:
    zone = ZoneoutGRU.from_gru(_gru(), 0.3).train()
    torch.manual_seed(0)
    mask = zone.zoneout_mask(torch.zeros(400, 500))
    assert abs(float(mask.mean()) - 0.3) < 0.005  # 200k Bernoulli(0.3): std 0.001


def test_trick_module_zoneout_on_the_paper_gru() -> None:
    torch.manual_seed(0)
    model = GRU1d(num_classes=3, in_channels=1, image_size=(1, 8), hidden_size=3)
    keys = list(model.state_dict())
    module = TrickModule(model, dropout=0.2, dropout_kind="zoneout", dropout_placement="every_hidden")
    assert type(module.model.gru) is ZoneoutGRU and module.model.gru.p == 0.2
    assert list(module.model.state_dict()) == keys
    x = torch.randn(4, 1, 1, 8)
    module.train()
    assert not torch.equal(module(x), module(x))
    module.eval()
    assert torch.equal(module(x), module(x))


def test_zoneout_refusals_are_one_line() -> None:
    torch.manual_seed(0)
    gru_model = GRU1d(num_classes=3, in_channels=1, image_size=(1, 8), hidden_size=3)
    with pytest.raises(ValueError, match=r"dropout_placement must be every_hidden for dropout_kind='zoneout'"):
        TrickModule(gru_model, dropout=0.2, dropout_kind="zoneout")
    with pytest.raises(ValueError, match=r"nn.GRU layers; the model has no nn.GRU layer"):
        TrickModule(MLP(hidden=[4]), dropout=0.2, dropout_kind="zoneout", dropout_placement="every_hidden")
    with pytest.raises(ValueError, match=r"the model has LSTM"):
        apply_zoneout(nn.Sequential(nn.LSTM(2, 2), nn.GRU(2, 2)), 0.1)
