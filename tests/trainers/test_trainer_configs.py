"""conf/trainer/*.yaml: every option composes, its keys are Trainer keywords, its strategy node matches its factory;
build_trainer, the strategy factories, linear LR scaling, SyncBatchNorm conversion, job_guard and the child command.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object, instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_tricks.trainers import hydra_job as jobs_mod
from lit_tricks.trainers.build import build_trainer
from lit_tricks.trainers.hydra_job import child_rank_command, config_hash, job_guard
from lit_tricks.trainers.strategies import (
    HydraSafeDDPStrategy,
    HydraSafeFSDPStrategy,
    HydraSafeModelParallelStrategy,
    ddp_strategy,
    fsdp_strategy,
    model_parallel_strategy,
    scale_learning_rates,
)
from tests.helpers.tiny import TinyClassifier

CONF = Path(__file__).resolve().parents[2] / "conf"
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
GPU_ONLY = {"gpu", "ddp", "ddp_spawn", "multinode", "fsdp", "fsdp2"}


@pytest.fixture
def clean_hydra() -> Iterator[None]:
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose_trainer(option: str, tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+trainer={option}", f"+paths.output_dir={tmp_path}", *overrides])


def test_all_required_trainer_options_exist() -> None:
    assert {"cpu", "gpu", "ddp", "ddp_spawn", "ddp_cpu", "multinode", "fsdp"} <= set(TRAINERS)


@pytest.mark.parametrize("option", TRAINERS)
def test_trainer_option_keys_match_trainer_and_strategy_signatures(option: str, tmp_path: Path,
                                                                    clean_hydra: None) -> None:
    cfg = compose_trainer(option, tmp_path)
    node = cfg.trainer
    assert node._target_ == "lightning.pytorch.Trainer"
    trainer_params = inspect.signature(pl.Trainer.__init__).parameters
    unknown = [k for k in node if not str(k).startswith("_") and k not in trainer_params]
    assert not unknown, f"trainer={option}: Trainer does not accept {unknown}"
    assert node.precision in ("32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true")
    strategy = node.get("strategy")
    if isinstance(strategy, DictConfig):
        factory = get_object(strategy._target_)
        params = inspect.signature(factory).parameters
        bad = [k for k in strategy if not str(k).startswith("_") and k not in params]
        assert not bad, f"trainer={option}: {strategy._target_} does not accept {bad}"
        # the strategy builds without a GPU (no process group until fit)
        built = instantiate(OmegaConf.to_container(strategy, resolve=True))
        assert isinstance(built, HydraSafeDDPStrategy | HydraSafeFSDPStrategy | HydraSafeModelParallelStrategy)
        assert built._timeout == timedelta(seconds=float(strategy.timeout_s))
    if option in GPU_ONLY:
        assert node.accelerator == "gpu"
    else:
        assert node.accelerator == "cpu"


def test_fsdp_cpu_is_model_parallel_over_two_cpu_processes(tmp_path: Path, clean_hydra: None) -> None:
    cfg = compose_trainer("fsdp_cpu", tmp_path)
    trainer = build_trainer(cfg, callbacks=[], logger=False)
    strategy = trainer.strategy
    assert isinstance(strategy, HydraSafeModelParallelStrategy) and trainer.num_devices == 2
    assert strategy._timeout == timedelta(seconds=60) and strategy._save_distributed_checkpoint
    assert strategy._data_parallel_size is None and strategy._tensor_parallel_size == 1  # None: every process
    from lit_tricks.fault.sharded_checkpoint import ShardedSaves

    assert ShardedSaves.of(strategy).keep  # its distributed checkpoints are written atomically
    with pytest.raises(ValueError, match="data_parallel_size must be an integer >= 1, got 0"):
        model_parallel_strategy(data_parallel_size=0)


def test_ddp_cpu_is_two_gloo_processes_with_a_short_timeout(tmp_path: Path, clean_hydra: None) -> None:
    cfg = compose_trainer("ddp_cpu", tmp_path)
    trainer = build_trainer(cfg, callbacks=[], logger=False)
    assert isinstance(trainer.strategy, HydraSafeDDPStrategy)
    assert trainer.strategy._process_group_backend == "gloo"
    assert trainer.strategy._timeout == timedelta(seconds=60)
    assert trainer.num_devices == 2 and trainer.world_size == 2
    assert trainer.precision == "32-true"


def test_sync_batchnorm_toggle_converts_batchnorm(tmp_path: Path, clean_hydra: None) -> None:
    cfg = compose_trainer("ddp", tmp_path, "trainer.sync_batchnorm=true")
    assert cfg.trainer.sync_batchnorm is True
    # what the key does on GPUs: Lightning's layer sync converts every BatchNorm before wrapping in DDP
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=ddp_strategy(), sync_batchnorm=True, logger=False)
    layer_sync = trainer.strategy._layer_sync
    assert layer_sync is not None
    model = layer_sync.apply(TinyClassifier())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is torch.nn.BatchNorm1d for m in model.modules())
    # torch's SyncBatchNorm cannot run on CPU: build_trainer says so at start-up, naming the key
    with pytest.raises(ValueError, match=r"sync_batchnorm needs GPUs.*got True"):
        build_trainer(compose_trainer("ddp_cpu", tmp_path, "trainer.sync_batchnorm=true"), callbacks=[], logger=False)


def test_bf16_precision_override_reaches_the_trainer(tmp_path: Path, clean_hydra: None) -> None:
    cfg = compose_trainer("cpu", tmp_path, "trainer.precision=bf16-mixed")
    assert build_trainer(cfg, callbacks=[], logger=False).precision == "bf16-mixed"


def test_plain_ddp_string_becomes_hydra_safe_only_under_hydra(tmp_path: Path, clean_hydra: None) -> None:
    cfg = compose_trainer("cpu", tmp_path, "trainer.devices=2", "trainer.strategy=ddp")
    trainer = build_trainer(cfg, callbacks=[], logger=False)
    assert type(trainer.strategy) is DDPStrategy  # Hydra is not running: nothing to protect


def test_plain_ddp_string_is_upgraded_under_hydra(tmp_path: Path, clean_hydra: None) -> None:
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+trainer=cpu", f"+paths.output_dir={tmp_path}", "trainer.devices=2",
                                 "trainer.strategy=ddp_find_unused_parameters_true"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        trainer = build_trainer(cfg, callbacks=[], logger=False)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    assert isinstance(trainer.strategy, HydraSafeDDPStrategy)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True


def test_strategy_factories_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        ddp_strategy(timeout_s=0)
    with pytest.raises(ValueError, match="start_method"):
        ddp_strategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sharding_strategy.*FULL_SHARD"):
        fsdp_strategy(sharding_strategy="ZERO4")
    assert ddp_strategy(timeout_s=5)._timeout == timedelta(seconds=5)
    assert fsdp_strategy(auto_wrap_min_params=None).kwargs.get("auto_wrap_policy") is None


def test_scale_learning_rates_scales_groups_and_scheduler_bases() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    scale_learning_rates([opt], [sched], 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 / 2)  # the schedule keeps working on the scaled base


def test_child_rank_command_runs_the_saved_config_in_rank0_dir() -> None:
    cmd = child_rank_command(1, "/tmp/cfg dir", "/runs/x's run", "train", chdir=False, job_num=3)
    assert cmd[0] == sys.executable
    assert "-m" not in cmd[2:] and "--multirun" not in cmd
    assert cmd[cmd.index("--config-path") + 1] == "/tmp/cfg dir"
    assert cmd[cmd.index("--config-name") + 1] == "config"
    overrides = [c for c in cmd if "=" in c and not c.startswith("-")]
    parsed = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["hydra.run.dir"] == "/runs/x's run"
    assert parsed["hydra.output_subdir"] is None
    assert parsed["hydra.job.num"] == 3 and parsed["hydra/job_logging"] == "stdout"


def test_config_hash_ignores_key_order_and_hydra_node() -> None:
    a = OmegaConf.create({"x": 1, "y": {"z": "${x}"}})
    b = OmegaConf.create({"y": {"z": 1}, "x": 1, "hydra": {"run": 1}})
    assert config_hash(a) == config_hash(b)
    with open_dict(b):
        b.x = 2
    assert config_hash(a) != config_hash(b)


@pytest.mark.slow  # a (1-rank) process group
def test_job_guard_restores_env_threads_and_destroys_process_group(tmp_path: Path) -> None:
    before = dict(os.environ)
    threads = torch.get_num_threads()
    with job_guard(OmegaConf.create({})):
        os.environ["LOCAL_RANK"] = "0"
        os.environ["MASTER_PORT"] = "12345"
        torch.set_num_threads(threads + 1)
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()
    assert dict(os.environ) == before
    assert torch.get_num_threads() == threads
    assert not dist.is_initialized()


@pytest.mark.slow
def test_job_guard_kills_child_ranks_when_the_job_fails() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    world_size = os.environ.get("WORLD_SIZE")
    try:
        with pytest.raises(RuntimeError, match="boom"), job_guard(OmegaConf.create({})):
            jobs_mod._JOB.children.append(child)
            os.environ["WORLD_SIZE"] = "2"
            raise RuntimeError("boom")
        assert child.poll() is not None  # reaped, not left waiting in a collective
        assert os.environ.get("WORLD_SIZE") == world_size
        assert jobs_mod._JOB.children == [] and jobs_mod._JOB.cfg is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_sweep_dir_resolves_before_hydra_config_exists(tmp_path: Path, clean_hydra: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # sweepers read hydra.sweep.dir before Hydra's ${hydra:...} resolver works: it must not depend on it
    from hydra.core.hydra_config import HydraConfig

    assert not HydraConfig.initialized()
    monkeypatch.setenv("LIT_TRICKS_LOG_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+hydra=default", "+task_name=train"], return_hydra_config=True)
    assert str(cfg.hydra.sweep.dir).startswith(f"{tmp_path}/train/multiruns/")
