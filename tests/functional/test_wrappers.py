"""The one rule for tensor names across model wrappers (torch.compile, DDP, Lightning's module wrapper)."""

from __future__ import annotations

from lit_tricks.functional.ema import strip_wrapper_prefixes as old_home
from lit_tricks.functional.wrappers import match_wrapped_keys, strip_wrapper_prefixes


def test_strip_wrapper_prefixes() -> None:
    assert strip_wrapper_prefixes("model._orig_mod.fc.weight") == "model.fc.weight"
    assert strip_wrapper_prefixes("module.net.0.bias") == "net.0.bias"
    assert strip_wrapper_prefixes("_forward_module.module._orig_mod.net.0.bias") == "net.0.bias"
    assert strip_wrapper_prefixes("net.modules_x.0.bias") == "net.modules_x.0.bias"  # whole segments only
    assert old_home is strip_wrapper_prefixes


def test_match_wrapped_keys_both_directions() -> None:
    plain = ["net.0.weight", "net.0.bias", "head.weight"]
    wrapped = {"module.net._orig_mod.0.weight": 1, "module.net._orig_mod.0.bias": 2, "module.head.weight": 3}
    assert match_wrapped_keys(wrapped, plain) == {"net.0.weight": 1, "net.0.bias": 2, "head.weight": 3}
    back = match_wrapped_keys({"net.0.weight": 1, "net.0.bias": 2, "head.weight": 3}, list(wrapped))
    assert back == dict(wrapped)


def test_match_wrapped_keys_keeps_exact_names_first() -> None:
    # a user attribute called ``module`` in both models: the exact key wins, nothing is stripped
    state = {"module.weight": 1, "other.weight": 2}
    assert match_wrapped_keys(state, ["module.weight", "other.weight"]) == state
    # keys with no counterpart become their stripped name (load_state_dict then reports them by that name)
    assert match_wrapped_keys({"module.extra": 5}, ["w"]) == {"extra": 5}
