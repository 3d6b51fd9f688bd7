"""``hparams_search=cmaes``: the preset's sampler, built as the sweeper builds it (seeded per trial), runs CMA-ES
generations and beats random search on a quadratic over the preset's own search space, with its trial count and fixed
seeds (in-process Optuna, no Hydra)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf

from lit_tricks.sweeps.study import build_sampler, parse_search_space

PRESET = Path(__file__).resolve().parents[2] / "conf" / "hparams_search" / "cmaes.yaml"
#: the optimum of the quadratic, inside the preset's ranges
TARGET = {"optimizer.lr": 0.03, "module.weight_decay": 1e-4}


def _best(sampler_name: str, seed: int, sweeper: Any, space: dict[str, Any]) -> optuna.Study:
    def objective(trial: optuna.Trial) -> float:
        values = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()}
        return sum((math.log10(values[k]) - math.log10(TARGET[k])) ** 2 for k in space)

    kwargs = sweeper.get("sampler_kwargs") if sampler_name == "cmaes" else None
    kwargs = OmegaConf.to_container(kwargs) if kwargs is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CmaEsSampler is marked experimental
        study = optuna.create_study(sampler=build_sampler(sampler_name, seed, space, kwargs))  # type: ignore[arg-type]
        study.optimize(objective, n_trials=int(sweeper.n_trials))
    return study


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmaes_preset_beats_random_search_on_a_quadratic(seed: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweeper = OmegaConf.load(PRESET).hydra.sweeper
    assert sweeper.sampler == "cmaes"
    space, fixed = parse_search_space(OmegaConf.to_container(sweeper.params))  # type: ignore[arg-type]
    assert set(space) == set(TARGET) and not fixed
    cma, rand = _best("cmaes", seed, sweeper, space), _best("random", seed, sweeper, space)
    generations = {t.system_attrs.get("cma:generation") for t in cma.trials} - {None}
    assert len(generations) >= 3  # the evolution strategy ran, not its random fallback
    assert cma.best_value < rand.best_value / 3, (cma.best_value, rand.best_value)
