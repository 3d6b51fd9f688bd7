"""Optuna pieces a training job needs inside a ``hydra/sweeper=lit_optuna`` sweep: storage URLs, pruners by name,
and the trial the running Hydra job belongs to (for :class:`~lit_tricks.callbacks.optuna_pruning.OptunaPruning`).

Imports optuna (the ``sweep`` extra) and nothing of lit_tricks, so callbacks and sweeps can both use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from lit_tricks.hydra_utils import hydra_config

__all__ = ["PRUNERS", "build_pruner", "current_trial", "default_storage_url", "open_storage", "resolve_storage_url"]

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "asha": optuna.pruners.SuccessiveHalvingPruner,  # Optuna's successive halving is the asynchronous one (ASHA)
    "hyperband": optuna.pruners.HyperbandPruner,
}


def default_storage_url(sweep_dir: str | Path) -> str:
    """``sqlite:///<task dir>/optuna.db``: the sweep's parent, above ``multiruns/`` (``logs/<task>/optuna.db``)."""
    parent = Path(sweep_dir).absolute().parent
    if parent.name == "multiruns":
        parent = parent.parent
    return f"sqlite:///{parent / 'optuna.db'}"


def resolve_storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage URL a sweep uses: ``storage`` as given, or :func:`default_storage_url` when it is null/empty."""
    if storage in (None, "", "null", "None"):
        return default_storage_url(sweep_dir)
    return str(storage)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> BaseStorage:
    """An Optuna storage from a URL.

    ``journal:///abs/file.log`` (or ``journal://rel/file.log``): a JournalStorage on a file (many workers on one
    machine or a shared file system); ``sqlite:///file.db``; ``postgresql+psycopg://user@host:port/db`` and any other
    SQLAlchemy URL: an RDBStorage (with Optuna's heartbeat when ``heartbeat_interval`` is set).
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." on every open
    if url.startswith("journal://"):
        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage must be a URL (sqlite:///..., postgresql+psycopg://..., journal:///...), "
                         f"got {url!r}")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for another writer's lock instead of failing
    else:
        engine_kwargs["pool_pre_ping"] = True
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period)
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers started together on an empty database race to create Optuna's tables and types (PostgreSQL:
            # "duplicate key value violates unique constraint pg_type_typname_nsp_index"); the loser finds them made.
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def build_pruner(name: str | None, kwargs: Mapping[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """A pruner by name: ``none``, ``median``, ``successive_halving`` (= ``asha``), ``hyperband``."""
    key = "none" if name in (None, "", "null") else str(name).lower()
    if key not in PRUNERS:
        raise ValueError(f"pruner must be one of {sorted(PRUNERS)}, got {name!r}")
    return PRUNERS[key](**dict(kwargs or {}))


def _sweeper_cfg() -> tuple[Any, Any] | None:
    hc = hydra_config()
    if hc is None:
        return None
    sweeper = hc.sweeper
    if "LitOptunaSweeper" not in str(sweeper.get("_target_", "")) or sweeper.get("trial") is None:
        return None
    return hc, sweeper


def current_trial() -> optuna.Trial | None:
    """The Optuna trial this Hydra job runs (``hydra/sweeper=lit_optuna``), or None outside such a sweep."""
    found = _sweeper_cfg()
    if found is None:
        return None
    hc, sweeper = found
    url = resolve_storage_url(sweeper.get("storage"), hc.sweep.dir)
    storage = open_storage(url)
    study = optuna.load_study(study_name=str(sweeper.study_name), storage=storage,
                              sampler=optuna.samplers.RandomSampler(),
                              pruner=build_pruner(sweeper.get("pruner"), sweeper.get("pruner_kwargs")))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(sweeper.trial))
    return optuna.Trial(study, trial_id)


