"""Evaluating sets of weights of one architecture on a run's splits: load them into the run's module, recalibrate
BatchNorm on the train split, collect logits, score accuracy and NLL; rebuild a run's parts from its directory."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_tricks.functional.ema import state_dict_aliases
from lit_tricks.functional.ensemble import recalibrate_bn_
from lit_tricks.functional.wrappers import match_wrapped_keys

__all__ = [
    "EVAL_SPLITS", "Evaluation", "evaluate_weights", "has_batchnorm", "load_state", "load_weights_", "markdown_table",
    "rebuild_run", "recalibrate_", "run_config", "score_logits", "split_loaders",
]

#: The splits weights are scored on: ``val`` selects (when the run has one), ``test`` reports.
EVAL_SPLITS = ("val", "test")

#: ``(metrics {"val/acc": .., "val/nll": .., "test/acc": ..}, logits {split: (N, C)}, targets {split: (N,)})``
Evaluation = tuple[dict[str, float], dict[str, Tensor], dict[str, Tensor]]


def run_config(run_dir: str | Path) -> Any:
    """A run's resolved config: ``config_resolved.yaml`` (written by lit_tricks.run), else ``.hydra/config.yaml``."""
    from omegaconf import DictConfig, OmegaConf

    for path in (Path(run_dir) / "config_resolved.yaml", Path(run_dir) / ".hydra" / "config.yaml"):
        if path.is_file():
            cfg = OmegaConf.load(path)
            if isinstance(cfg, DictConfig):
                return cfg
    raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no config_resolved.yaml or .hydra/config.yaml")


def rebuild_run(run_dir: str | Path) -> tuple[Any, Any, Any]:
    """``(cfg, datamodule, module)`` of a lit_tricks run rebuilt from its config (seeded as the run was); the
    module holds freshly initialized weights: load the ones to evaluate with :func:`load_weights_`."""
    import lightning.pytorch as pl

    from lit_tricks.builders import build_datamodule, build_model, build_module

    cfg = run_config(run_dir)
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("test")
    return cfg, dm, build_module(cfg, build_model(cfg, dm), dm)


def load_state(path: str | Path) -> dict[str, Tensor]:
    """The model ``state_dict`` in ``path``: a Lightning checkpoint's ``"state_dict"`` or a plain state dict."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return dict(payload["state_dict"])
    if isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        return dict(payload)
    raise ValueError(f"{path} holds neither a Lightning checkpoint nor a state_dict")


@torch.no_grad()
def load_weights_(module: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into ``module`` (names across wrappers matched; a tied tensor given under one of its names is
    written under all of them); every tensor of the module must be given."""
    full = dict(module.state_dict())
    aliases = state_dict_aliases(module)
    for name, tensor in match_wrapped_keys(state, full.keys()).items():
        for key in aliases.get(name, [name]):
            if key not in full:
                raise KeyError(f"the weights hold {key!r}, which the module does not have")
            full[key] = tensor
    given = {k for name in match_wrapped_keys(state, full.keys()) for k in aliases.get(name, [name])}
    missing = [k for k in full if k not in given]
    if missing:
        raise KeyError(f"the weights lack {missing[:5]} of the module")
    module.load_state_dict(full)


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` has BatchNorm layers that track running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in module.modules())


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.zeros(())).device


def _inputs(loader: Iterable[Any], device: torch.device, limit: int | None) -> Iterator[Tensor]:
    for batch in itertools.islice(loader, limit):
        yield (batch[0] if isinstance(batch, list | tuple) else batch).to(device)


def recalibrate_(module: nn.Module, train_loader: Iterable[Any], batches: int | None = None, seed: int = 0) -> int:
    """Recompute BatchNorm statistics of ``module`` on ``batches`` train batches (all: None) with the RNG seeded
    (the same augmentation draws for every candidate); the one place posthoc calls
    :func:`lit_tricks.functional.ensemble.recalibrate_bn_`. Returns the batches used (0 without BatchNorm)."""
    if not has_batchnorm(module):
        return 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return recalibrate_bn_(module, _inputs(train_loader, _device(module), batches), lambda m, x: m(x))


def split_loaders(dm: Any) -> dict[str, Any]:
    """``{split: loader}`` for the splits of :data:`EVAL_SPLITS` the DataModule has (an empty val split is left
    out)."""
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        try:
            loader = getattr(dm, f"{split}_dataloader")()
        except Exception:  # a DataModule without that split
            continue
        if loader is not None and not (isinstance(loader, list | tuple) and len(loader) == 0):
            out[split] = loader[0] if isinstance(loader, list | tuple) else loader
    return out


def score_logits(logits: Tensor, targets: Tensor, split: str) -> dict[str, float]:
    """``{"<split>/acc", "<split>/nll"}`` of class logits ``(N, C)`` (or probabilities' log) against ``targets``."""
    logp = logits.double().log_softmax(-1)
    return {f"{split}/acc": float((logp.argmax(-1) == targets).double().mean()),
            f"{split}/nll": float(nn.functional.nll_loss(logp, targets))}


@torch.no_grad()
def evaluate_weights(module: nn.Module, state: Mapping[str, Tensor] | None, loaders: Mapping[str, Any],
                     train_loader: Iterable[Any] | None = None, bn_batches: int | None = None) -> Evaluation:
    """Load ``state`` into ``module`` (None: keep its weights), recalibrate BatchNorm on ``train_loader`` when given,
    and score the logits of each split of ``loaders`` (batches ``(x, y, ...)``; eval mode)."""
    if state is not None:
        load_weights_(module, state)
    if train_loader is not None:
        recalibrate_(module, train_loader, bn_batches)
    was_training = module.training
    module.eval()
    metrics: dict[str, float] = {}
    logits: dict[str, Tensor] = {}
    targets: dict[str, Tensor] = {}
    device = _device(module)
    try:
        for split, loader in loaders.items():
            outs, ys = [], []
            for batch in loader:
                outs.append(module(batch[0].to(device)).float().cpu())
                ys.append(batch[1].cpu())
            logits[split], targets[split] = torch.cat(outs), torch.cat(ys)
            metrics.update(score_logits(logits[split], targets[split], split))
    finally:
        module.train(was_training)
    return metrics, logits, targets


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a markdown table of ``columns`` (floats with 4 decimals, missing as ``-``)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
