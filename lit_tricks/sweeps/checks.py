"""The ``lit_optuna`` sweeper's own argument checks that need more than a number range: the storage URL (its form,
a driver, a server that answers) and an existing study's direction and search space.

Each raises :class:`~lit_tricks.validation.ArgumentError` naming the sweeper key and the value, before the sweep
writes anything (a refused sweep leaves no directory, no ``multirun.yaml``, no database file, no RUNNING trial).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_tricks.validation import ArgumentError

__all__ = ["check_storage_url", "check_study_compatible", "check_sweeper_args", "describe", "display_url",
           "grid_n_trials", "preflight_compose", "probe_storage"]

STORAGE_KEY = "hydra.sweeper.storage"
_FORMS = "sqlite:///path.db, journal:///path.log or postgresql+psycopg://user:password@host:port/db"
#: Seconds a storage server gets to answer the sweeper's first connection.
CONNECT_TIMEOUT_S = 5


def describe(dist: Any) -> str:
    """An Optuna distribution in the override syntax it came from (``choice(0.3, 0.1)``, ``interval(0.0, 1.0)``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "choice(" + ", ".join(str(c) for c in dist.choices) + ")"
    if isinstance(dist, FloatDistribution | IntDistribution):
        tags = [t for t, on in (("log", dist.log), ("int", isinstance(dist, IntDistribution))) if on]
        body = f"interval({dist.low}, {dist.high})"
        return f"tag({', '.join(tags)}, {body})" if tags else body
    return repr(dist)


def check_sweeper_args(*, direction: Any, n_trials: Any, n_jobs: Any, sampler: Any, sampler_kwargs: Any,
                       seed: Any, pruner: Any, pruner_kwargs: Any, storage: Any, study_name: Any,
                       heartbeat_interval: Any, grace_period: Any, poll_interval: Any, params: Any, trial: Any,
                       resume_key: Any) -> None:
    """Every field of ``conf/hydra/sweeper/lit_optuna.yaml`` on its own (the sweeper's constructor calls this)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ArgumentError("hydra/sweeper", "lit_optuna", "needs Optuna (lit_tricks' sweep extra): pip install "
                            "'optuna>=4,<6' 'sqlalchemy>=2' 'psycopg[binary]>=3' cmaes") from None
    from lit_tricks.optuna_job import PRUNERS, build_pruner
    from lit_tricks.sweeps.study import SAMPLERS
    from lit_tricks.validation import DIRECTIONS, check_choice, check_number

    k = "hydra.sweeper."
    if str(direction) not in DIRECTIONS:
        raise ArgumentError(k + "direction", direction, f"must be one of {sorted(DIRECTIONS)} (it follows "
                            "monitor_mode unless set; monitor_mode is min or max)")
    if n_trials is not None:
        check_number(k + "n_trials", n_trials, 1, integer=True)
    check_number(k + "n_jobs", n_jobs, 1, integer=True)
    check_choice(k + "sampler", str(sampler).lower(), [*SAMPLERS, "cma-es", "cma_es"])
    for name, value in (("sampler_kwargs", sampler_kwargs), ("pruner_kwargs", pruner_kwargs), ("params", params)):
        if value is not None and not isinstance(value, Mapping):
            raise ArgumentError(k + name, value, "must be a mapping (key: value)")
    if seed is not None:
        check_number(k + "seed", seed, 0, integer=True)
    if trial is not None:
        check_number(k + "trial", trial, 0, integer=True)
    name = "none" if pruner in (None, "", "null") else str(pruner).lower()
    check_choice(k + "pruner", name, sorted(PRUNERS))
    try:
        build_pruner(name, dict(pruner_kwargs or {}))
    except (TypeError, ValueError) as err:
        raise ArgumentError(k + "pruner_kwargs", dict(pruner_kwargs or {}),
                            f"rejected by pruner={name}: {str(err).strip().splitlines()[0]}") from None
    if storage not in (None, "", "null", "None"):
        if not isinstance(storage, str):
            raise ArgumentError(STORAGE_KEY, storage, f"must be a URL: {_FORMS}")
        check_storage_url(storage)
    if not isinstance(study_name, str) or not study_name.strip():
        raise ArgumentError(k + "study_name", study_name, "must be a non-empty name")
    if heartbeat_interval is not None:
        check_number(k + "heartbeat_interval", heartbeat_interval, 0, lo_open=True)
    if grace_period is not None:
        check_number(k + "grace_period", grace_period, 0, lo_open=True)
    if heartbeat_interval is not None and grace_period is not None and grace_period <= heartbeat_interval:
        raise ArgumentError(k + "grace_period", grace_period, f"must exceed heartbeat_interval={heartbeat_interval}"
                            " (a live worker would look dead between two beats)")
    check_number(k + "poll_interval", poll_interval, 0, lo_open=True)
    if resume_key is not None and (not isinstance(resume_key, str) or not resume_key.strip()):
        raise ArgumentError(k + "resume_key", resume_key, "must be a config key (resume) or null")


def display_url(url: str) -> str:
    """``url`` with its password masked (for messages and logs)."""
    if url.startswith("journal://") or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def check_storage_url(url: str) -> None:
    """Refuse a storage URL that cannot work: unparsable, a SQLite URL without a file, a backend without a driver."""
    if url.startswith("journal://"):
        path = Path(url[len("journal://"):])
        if not str(path) or str(path) == ".":
            raise ArgumentError(STORAGE_KEY, url, f"names no journal file; use {_FORMS}")
        if path.is_dir():
            raise ArgumentError(STORAGE_KEY, url, "is a directory; a journal storage is a file")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as SAArgumentError
    from sqlalchemy.exc import NoSuchModuleError

    try:
        parsed = make_url(url)
    except SAArgumentError:
        raise ArgumentError(STORAGE_KEY, url, f"is not a storage URL; use {_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.host or not parsed.database or parsed.database == ":memory:":
            raise ArgumentError(STORAGE_KEY, url, "names no database file (an in-memory study is lost with the "
                                "process); use sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if Path(parsed.database).is_dir():
            raise ArgumentError(STORAGE_KEY, url, "is a directory; a SQLite storage is a file")
        return
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ArgumentError(STORAGE_KEY, display_url(url), f"names no database SQLAlchemy knows; use {_FORMS}"
                            ) from None
    except ImportError as err:
        raise ArgumentError(STORAGE_KEY, display_url(url), f"needs a {backend} driver that is not installed ({err})"
                            f"; lit_tricks[sweep] brings SQLite and PostgreSQL: {_FORMS}") from None


def probe_storage(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once to a database server (not SQLite, not a journal file), failing within ``timeout_s`` with one
    line; Optuna's own open retries and migrates for tens of seconds before it gives up on a server that is down."""
    if url.startswith(("journal://", "sqlite:")):
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, round(timeout_s))
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        cause = getattr(err, "orig", None) or err
        text = " ".join(str(cause).split())[:300] or type(cause).__name__
        raise ArgumentError(STORAGE_KEY, display_url(url), f"cannot be reached: {text}") from None
    finally:
        engine.dispose()


def check_study_compatible(storage: Any, study_name: str, direction: str, space: Mapping[str, Any],
                           texts: Mapping[str, str]) -> None:
    """Refuse to add to an existing study that optimizes the other way or samples a parameter from another choice
    list (Optuna would fail inside ``ask`` after creating the trial). ``texts``: key -> the space as written."""
    from optuna.distributions import check_distribution_compatibility

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return  # a new study
    old = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if old != [direction]:
        raise ArgumentError("hydra.sweeper.study_name", study_name,
                            f"names a study created to {'/'.join(old)} and this sweep would {direction} "
                            "(monitor_mode): pick another study_name")
    seen: dict[str, Any] = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        for key, dist in trial.distributions.items():
            seen.setdefault(key, dist)
    for key, new in space.items():
        if key not in seen:
            continue
        try:
            check_distribution_compatibility(seen[key], new)
        except ValueError:
            old_text = describe(seen[key])
            raise ArgumentError(key, texts.get(key, repr(new)),
                                f"differs from what study {study_name!r} sampled ({old_text}); Optuna cannot change "
                                "it within a study: pick a new hydra.sweeper.study_name") from None


def grid_n_trials(n_trials: int | None, grid: Mapping[str, list[Any]] | None) -> int:
    """``n_trials`` of a sweep: null means the grid's size (grid only); a grid never runs more trials than points."""
    import math

    size = math.prod(len(v) for v in grid.values()) if grid is not None else None
    if n_trials is None:
        if size is None:
            raise ArgumentError("hydra.sweeper.n_trials", None, "may be null only with sampler=grid (the grid's size)")
        return size
    if size is not None and int(n_trials) > size:
        raise ArgumentError("hydra.sweeper.n_trials", n_trials, f"exceeds the grid's {size} points (null = its size)")
    return int(n_trials)


def preflight_compose(config_loader: Any, config: Any, fixed: list[str], space: Mapping[str, Any]) -> None:
    """Compose job configs as the launcher will (each choice of each parameter once): an override that does not
    apply (a misspelt key, an unknown group option) is refused before the sweep writes anything."""
    from lit_tricks.sweeps.study import override_value

    width = max([len(d.choices) for d in space.values() if hasattr(d, "choices")] or [1])
    for i in range(width):
        point = {k: d.choices[i % len(d.choices)] if hasattr(d, "choices") else d.low for k, d in space.items()}
        overrides = [*fixed, *(f"{k}={override_value(v)}" for k, v in point.items())]
        try:
            config_loader.load_sweep_config(config, overrides)
        except Exception as err:
            text = " ".join(str(err).split()) or type(err).__name__
            key = text.split("'")[1] if text.count("'") >= 2 else "hydra.sweeper.params"
            value = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), " ".join(overrides))
            raise ArgumentError(key, value, f"does not compose into a job config: {text[:300]}") from None
