"""Changed arguments on resume: a callback's ``state_key`` holds its identifying arguments (as Lightning's
EarlyStopping and ModelCheckpoint do), so a run resumed with another value of one of them finds no state under its
key and would silently start that callback afresh. :func:`warn_changed_args` says so in one line.

Arguments that only size a state (a history length, a top-k) are not in the key: a run resumed with another value
loads the state, and the callback keeps its newest (or best) values. :func:`adopt_resized_state` finds a state saved
when such an argument was still part of the key."""

from __future__ import annotations

import logging
import operator
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lit_tricks.compat import legacy_state_key, state_key_args

__all__ = ["adopt_resized_state", "cached_state_key", "changed_args", "warn_changed_args"]

log = logging.getLogger(__name__)

_SCALARS = (bool, int, float, str, type(None))


def cached_state_key(callback: Callback, **args: Any) -> str:
    """``callback._generate_state_key(**args)``, built again only when an argument is another object: Lightning reads
    ``state_key`` at every hook it dispatches to a callback (the profiler's label), and the repr of the arguments
    costs 1-2 us each time, a dozen times a step. Arguments other than scalars and tuples of scalars (a list could
    change in place) are not cached."""
    values = tuple(args.values())
    cached = callback.__dict__.get("_lit_tricks_state_key")
    if cached is not None and (all(map(operator.is_, cached[0], values)) or _same_objects(cached[0], values)):
        return cached[1]  # type: ignore[no-any-return]
    key = callback._generate_state_key(**args)
    if all(isinstance(v, _SCALARS) or (isinstance(v, tuple) and all(isinstance(x, _SCALARS) for x in v))
           for v in values):
        callback.__dict__["_lit_tricks_state_key"] = (values, key)
    return key


def _same_objects(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """The very objects, tuples element by element (a fresh ``tuple(list)`` each call): ``==`` would keep the key of
    1 after 1.0, True, -0.0 or a numpy float, whose reprs (the key) differ."""
    for a, b in zip(old, new):
        if a is not b and not (type(a) is tuple and type(b) is tuple and len(a) == len(b)
                               and all(map(operator.is_, a, b))):
            return False
    return True


def changed_args(callback: Callback, checkpoint: dict[str, Any]) -> list[tuple[str, dict[str, tuple[Any, Any]]]]:
    """``[(stored state_key, {arg: (old, new)})]`` for the states of ``callback``'s class in ``checkpoint`` saved
    with other identifying arguments, when none was saved under ``callback.state_key`` itself."""
    states = checkpoint.get("callbacks") or {}
    if callback.state_key in states or legacy_state_key(callback) in states:
        return []
    prefix = type(callback).__qualname__
    mine = state_key_args(callback.state_key, prefix) or {}
    out = []
    for key in states:
        if not isinstance(key, str) or not key.startswith(prefix + "{"):
            continue
        old = state_key_args(key, prefix)
        if old is None:
            continue
        diff = {k: (old.get(k), mine.get(k)) for k in sorted(set(old) | set(mine)) if old.get(k) != mine.get(k)}
        out.append((key, diff))
    return out


def warn_changed_args(callback: Callback, checkpoint: dict[str, Any]) -> bool:
    """Warn (one line per stored state) when ``checkpoint`` holds a state of ``callback``'s class saved with other
    identifying arguments: that state is not restored, the callback starts afresh. Returns whether it warned."""
    found = changed_args(callback, checkpoint)
    for _key, diff in found:
        changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())
        rank_zero_warn(
            f"{type(callback).__name__}: the checkpoint holds this callback's state saved with other arguments "
            f"({changes}); that state is NOT restored and {type(callback).__name__} starts afresh (resume with the "
            "old arguments to continue it)."
        )
    return bool(found)


def adopt_resized_state(callback: Callback, checkpoint: dict[str, Any], sizing: tuple[str, ...]) -> bool:
    """File a state of ``callback``'s class under ``callback.state_key`` when ``checkpoint`` holds none there but one
    whose key differs only in ``sizing`` arguments (older versions kept them in the key), so that Lightning loads it;
    returns whether it did. Call it from ``on_load_checkpoint`` (Lightning loads the states after that hook)."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict):
        return False
    for key, diff in changed_args(callback, checkpoint):
        if set(diff) <= set(sizing):
            states[callback.state_key] = states[key]
            return True
    return False
