"""lit_tricks.compat.nvml: Lightning's NVML-based CUDA check dropped where NVML cannot load, every answer unchanged."""

from __future__ import annotations

import ctypes
import functools
import os

import lightning.pytorch as pl
import pytest
import torch

from lit_tricks.compat import nvml
from lit_tricks.modules import TrickModule

needs_no_nvml = pytest.mark.skipif(nvml.nvml_loadable(), reason="NVML loads here (a GPU host): nothing to drop")


@pytest.fixture
def nvml_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names passed to ctypes.CDLL for libnvidia-ml (torch's NVML-based check imports CDLL at each call)."""
    seen: list[str] = []
    real = ctypes.CDLL

    def counting(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        if "nvidia-ml" in str(name):
            seen.append(str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", counting)
    return seen


def _adamw_step() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones(3)
    opt.step()


@needs_no_nvml
def test_dropping_the_variable_keeps_torchs_answer_and_saves_the_load_per_step(
    monkeypatch: pytest.MonkeyPatch, nvml_loads: list[str]
) -> None:
    monkeypatch.delenv(nvml.NVML_CHECK_VAR, raising=False)
    without = torch.cuda.is_available()  # the oracle: torch's answer with no NVML-based check
    monkeypatch.setenv(nvml.NVML_CHECK_VAR, "1")  # as `import lightning` leaves it
    assert torch.cuda.is_available() == without
    _adamw_step()
    assert nvml_loads, "torch's NVML-based check no longer loads NVML per step: this module is obsolete"
    assert nvml.drop_futile_nvml_check() is True
    assert nvml.NVML_CHECK_VAR not in os.environ
    nvml_loads.clear()
    _adamw_step()
    assert torch.cuda.is_available() == without
    assert nvml_loads == []
    assert nvml.drop_futile_nvml_check() is False  # nothing left to drop


def test_kept_where_nvml_loads_or_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nvml.NVML_CHECK_VAR, "1")
    monkeypatch.setattr(nvml, "nvml_loadable", lambda: True)
    assert nvml.drop_futile_nvml_check() is False
    assert os.environ[nvml.NVML_CHECK_VAR] == "1"
    monkeypatch.setenv(nvml.NVML_CHECK_VAR, "0")  # a user's own choice is not touched
    monkeypatch.setattr(nvml, "nvml_loadable", lambda: False)
    assert nvml.drop_futile_nvml_check() is False
    assert os.environ[nvml.NVML_CHECK_VAR] == "0"


def _fit_loads(steps: int, nvml_loads: list[str]) -> int:
    """NVML loads during a TrickModule fit of ``steps`` AdamW steps, Lightning's variable set as at import."""
    os.environ[nvml.NVML_CHECK_VAR] = "1"
    nvml_loads.clear()
    x = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    module = TrickModule(torch.nn.Linear(4, 2), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, data)
    return len(nvml_loads)


@needs_no_nvml
def test_a_trick_module_fit_loads_nvml_at_no_step(monkeypatch: pytest.MonkeyPatch, nvml_loads: list[str]) -> None:
    monkeypatch.setenv(nvml.NVML_CHECK_VAR, "1")  # restored after the test
    assert _fit_loads(4, nvml_loads) == _fit_loads(12, nvml_loads)  # the Trainer's set-up checks only
    assert nvml.NVML_CHECK_VAR not in os.environ
    monkeypatch.setattr("lit_tricks.modules.task_steps.drop_futile_nvml_check", lambda: False)  # the oracle
    assert _fit_loads(12, nvml_loads) - _fit_loads(4, nvml_loads) == 8  # one load per step without it
