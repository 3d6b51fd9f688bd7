"""EMAState without a Trainer: the recurrence against a hand-written loop, the decay rules, swapping, tied weights,
state round trips and pickling."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from lit_tricks.functional.ema_state import EMAState


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _step(model: nn.Module, k: int) -> None:
    """A fake optimizer step: new weights and BatchNorm statistics (a forward in train mode)."""
    g = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model.train()(torch.randn(8, 3, generator=g))


def test_update_follows_the_hand_written_recurrence_with_warmup() -> None:
    model = _net()
    state = EMAState(0.9, warmup=True)
    state.bind(model)
    expected = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    for t in range(5):
        _step(model, t)
        d = min(0.9, (1 + t) / (10 + t))
        assert state.update() == d
        for k, v in model.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * v.detach().double()
    assert state.num_updates == 5
    magnitude = max(float(v.abs().max()) for v in expected.values())
    for k, v in expected.items():
        # float32 lerp vs the float64 recurrence: a few float32 ulps of the magnitudes involved, per update
        torch.testing.assert_close(state.ema_state_dict[k].double(), v, rtol=0,
                                   atol=5 * 4 * torch.finfo(torch.float32).eps * magnitude)
    # buffers="copy": the EMA buffers are the model's, the integer counter included
    assert torch.equal(state.ema_state_dict["1.running_mean"], model[1].running_mean)
    assert torch.equal(state.ema_state_dict["1.num_batches_tracked"], model[1].num_batches_tracked)


def test_half_life_overrides_decay_and_average_buffers_keep_integers_copied() -> None:
    state = EMAState(0.5, half_life_steps=4, update_every_n_steps=2, buffers="average")
    assert state.decay_at(0) == state.base_decay == pytest.approx(0.5 ** 0.5)
    model = _net()
    state.bind(model)
    before = model[1].running_mean.clone()
    _step(model, 0)
    d = state.update()
    torch.testing.assert_close(state.ema_state_dict["1.running_mean"], d * before + (1 - d) * model[1].running_mean)
    assert torch.equal(state.ema_state_dict["1.num_batches_tracked"], model[1].num_batches_tracked)


def test_swap_in_and_out_restore_the_trained_weights_bit_for_bit() -> None:
    model = _net()
    state = EMAState(0.5)
    state.bind(model)
    _step(model, 0)
    state.update()
    trained = copy.deepcopy(model.state_dict())
    with state.swapped_in(model):
        assert state.swapped
        for k, v in state.ema_state_dict.items():
            assert torch.equal(model.state_dict()[k], v), k
        with state.swapped_in():  # nested: stays in until the outer block ends
            pass
        assert state.swapped
    assert not state.swapped
    for k, v in trained.items():
        assert torch.equal(model.state_dict()[k], v), k
    state.swap_out()  # no-op when out
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


def test_follow_copies_and_keep_model_buffers_and_set_buffers() -> None:
    model = _net()
    state = EMAState(0.9)
    state.bind(model)
    _step(model, 1)
    state.follow()
    assert all(torch.equal(state.ema_state_dict[k], v) for k, v in model.state_dict().items())
    state.swap_in()
    new = [torch.full_like(b, 7) for b in state.ema_buffers]
    state.set_buffers(new)  # while swapped in: the model gets them too
    assert torch.equal(model[1].running_var, torch.full((4,), 7.0))
    model[1].running_mean.fill_(3.0)
    state.keep_model_buffers()
    assert torch.equal(state.ema_state_dict["1.running_mean"], torch.full((4,), 3.0))


def test_tied_weights_are_written_under_every_key() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight  # tied
    state = EMAState(0.0)
    state.bind(model)
    assert state.names == ["0.weight"] and state.aliases == {"0.weight": ["0.weight", "1.weight"]}
    with torch.no_grad():
        state.ema_params[0].fill_(2.0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    state.write_into(sd)
    assert torch.equal(sd["0.weight"], sd["1.weight"]) and float(sd["1.weight"][0, 0]) == 2.0
    raw = model[0].weight.detach().clone()
    state.swap_in()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    state.write_into(sd, raw=True)
    assert torch.equal(sd["0.weight"], raw) and torch.equal(sd["1.weight"], raw)


def test_state_dict_round_trip_matches_wrapped_names_and_refuses_another_model() -> None:
    model = _net()
    state = EMAState(0.8)
    state.bind(model)
    _step(model, 2)
    state.update()
    saved = state.state_dict()
    saved["ema"] = {"module." + k: v.clone() for k, v in saved["ema"].items()}  # from a DDP-wrapped model
    other = EMAState(0.8)
    other.load_state_dict(copy.deepcopy(saved))
    assert not other.ready and other.state_dict()["ema"].keys() == saved["ema"].keys()  # not bound: as loaded
    other.bind(_net())
    assert other.ready and other.num_updates == 1
    assert all(torch.equal(other.ema_state_dict[k], v) for k, v in state.ema_state_dict.items())
    wrong = EMAState()
    wrong.load_state_dict(copy.deepcopy(saved))
    with pytest.raises(RuntimeError, match="another model"):
        wrong.bind(nn.Linear(2, 2))


def test_pickle_drops_the_module_tensors_and_reset_forgets() -> None:
    model = _net()
    state = EMAState(0.8, device="cpu")
    state.bind(model)
    state.swap_in()
    clone = pickle.loads(pickle.dumps(state))
    assert clone.model_params == [] and not clone.swapped and clone.ema_state_dict.keys() == state.ema_state_dict.keys()
    state.reset()
    assert state.names == [] and state.num_updates == 0 and not state.ready


@pytest.mark.parametrize(("kwargs", "match"), [({"decay": 1.5}, "decay"), ({"buffers": "mean"}, "buffers"),
                                               ({"half_life_steps": 0}, "half_life_steps")])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMAState(**kwargs)


def test_bf16_weights_get_an_fp32_shadow_written_back_in_bf16() -> None:
    model = nn.Linear(4, 3).to(torch.bfloat16)
    state = EMAState(0.999)
    state.bind(model)
    assert {t.dtype for t in state.ema_params} == {torch.float32}
    start = state.ema_params[0].clone()
    with torch.no_grad():
        model.weight.add_(0.25)  # (1 - d) * 0.25 is below half a bf16 ulp of most weights: a bf16 EMA would not move
    state.update()
    moved = 0.001 * (model.weight.float() - start)  # the recurrence in fp32, on the bf16 weights as they are
    torch.testing.assert_close(state.ema_params[0] - start, moved, rtol=0, atol=4 * torch.finfo().eps)
    written = dict(model.state_dict())
    state.write_into(written, model_dtype=True)
    assert written["weight"].dtype == torch.bfloat16
    assert torch.equal(written["weight"], state.ema_params[0].to(torch.bfloat16))
    same = EMAState(0.999, ema_dtype="model")
    same.bind(model)
    assert same.ema_params[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="ema_dtype must be one of"):
        EMAState(ema_dtype="half")


@pytest.mark.parametrize("decay, warmup", [(0.9, True), (0.999, False), (0.0, False)])
def test_the_plain_update_is_bit_for_bit_the_general_kernels(decay: float, warmup: bool) -> None:
    """update() takes one no_grad block of two foreach kernels for unsharded same-dtype tensors; the oracle is the
    general path's functions (average_ over the parameters, update_buffers_ over the buffers) on a copy."""
    from lit_tricks.functional.ema import update_buffers_
    from lit_tricks.functional.ema_shadows import average_

    model = _net()
    state = EMAState(decay, warmup=warmup)
    state.bind(model)
    params = [t.clone() for t in state.ema_params]
    buffers = [t.clone() for t in state.ema_buffers]
    by_torch = [t.clone() for t in state.ema_params]  # torch's own per-tensor lerp: an oracle outside lit_tricks
    for t in range(4):
        _step(model, t)
        d = state.decay_at(t)
        assert state.update() == d
        average_(params, state.model_params, d)
        update_buffers_(buffers, state.model_buffers, d, "copy")
        assert all(torch.equal(a, b) for a, b in zip(state.ema_params + state.ema_buffers, params + buffers))
        by_torch = [p.detach().clone() if d == 0 else torch.lerp(e, p.detach(), 1.0 - d)
                    for e, p in zip(by_torch, state.model_params)]
        assert all(torch.equal(a, b) for a, b in zip(state.ema_params, by_torch))
        assert all(torch.equal(a, b.detach()) for a, b in zip(state.ema_buffers, state.model_buffers))  # copied
    # a float64 shadow of float32 weights, or buffers="average", takes the general path: it still updates
    for kwargs in ({"ema_dtype": "float64"}, {"buffers": "average"}):
        other = EMAState(0.5, **kwargs)
        other.bind(model)
        before = [t.clone() for t in other.ema_params]
        _step(model, 9)
        other.update()
        assert other.num_updates == 1 and not torch.equal(before[0], other.ema_params[0]), kwargs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_averaged_16_bit_buffers_follow_the_recurrence_in_their_fp32_shadows(dtype: torch.dtype) -> None:
    """buffers="average" on a bf16/fp16 model: the BatchNorm statistics' fp32 shadows are averaged like the weights'
    (the buffers cast to fp32), the integer counter copied; the oracle is a hand-written float64 recurrence."""
    model = _net().to(dtype)
    state = EMAState(0.9, buffers="average")
    state.bind(model)
    expected = {k: v.detach().double() for k, v in model.state_dict().items()}
    for t in range(3):
        g = torch.Generator().manual_seed(100 + t)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(dtype))
            model.train()(torch.randn(8, 3, generator=g).to(dtype))
        state.update()
        for k, v in model.state_dict().items():
            expected[k] = 0.9 * expected[k] + 0.1 * v.double() if v.is_floating_point() else v.double()
    for k, v in state.ema_state_dict.items():
        assert v.dtype == (torch.float32 if model.state_dict()[k].is_floating_point() else torch.int64), k
        tol = 16 * torch.finfo(torch.float32).eps * float(expected[k].abs().max().clamp_min(1.0))
        assert torch.allclose(v.double(), expected[k], rtol=0.0, atol=tol), k
