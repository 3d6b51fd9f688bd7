"""SanityChecks: the notes' checks before training: loss at init ~ log(C), and the model can overfit a tiny subset."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lit_tricks.compat import first_train_loader
from lit_tricks.diagnostics.training_step import training_step_loss
from lit_tricks.fault.state_keys import cached_state_key
from lit_tricks.functional.diagnosis import first_samples
from lit_tricks.validation import check_choice, check_number

__all__ = ["SanityCheckError", "SanityChecks"]

_ON_FAILURE = ("raise", "stop", "warn")
_OVERFIT_LOSS = ("training_step", "cross_entropy")
Result = dict[str, float | bool | str]
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class SanityCheckError(RuntimeError):
    """Raised by :class:`SanityChecks` (``on_failure="raise"``) when a check fails."""


def _copy_without_dropout(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)  # a LightningModule drops its trainer reference when copied
    clone.train()
    for m in clone.modules():
        if isinstance(m, _DROPOUT):
            m.eval()
    return clone


class SanityChecks(pl.Callback):
    """At the start of training, check (1) the loss at initialization and (2) that a tiny subset can be overfit.

    (1) Softmax cross-entropy of the untrained model's outputs on the first ``init_samples`` training samples, with
    no regularization: about ``log(num_classes)`` (every class equally likely); it fails when
    ``|loss / log(C) - 1| > init_tolerance`` (an exploding or badly scaled init, or a bug in the output layer).
    (2) A copy of the module trains on the first ``overfit_samples`` samples with Adam(``overfit_lr``) for up to
    ``overfit_steps`` steps through its own ``training_step`` (``overfit_loss="training_step"``, so label-handling
    bugs in it show) or plain cross-entropy; it fails unless the accuracy against the batch labels reaches
    ``overfit_accuracy`` (a model that cannot memorize 20 samples has a bug).
    Both run on deep copies with dropout off and under a forked RNG: the real model and the run are untouched.
    ``on_failure``: ``"raise"`` (:class:`SanityCheckError`), ``"stop"`` (report and end the fit before step 0) or
    ``"warn"``. Batches must be ``(x, y, ...)`` with class labels ``y``. CS231n, "Before learning: sanity checks".
    """

    def __init__(
        self,
        num_classes: int | None = None,
        check_init_loss: bool = True,
        init_samples: int = 256,
        init_tolerance: float = 0.25,
        check_overfit: bool = True,
        overfit_samples: int = 20,
        overfit_steps: int = 200,
        overfit_lr: float = 1e-2,
        overfit_accuracy: float = 1.0,
        overfit_loss: str = "training_step",
        on_failure: str = "raise",
        seed: int = 0,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        check_choice("on_failure", on_failure, _ON_FAILURE, owner="SanityChecks")
        check_choice("overfit_loss", overfit_loss, _OVERFIT_LOSS, owner="SanityChecks")
        check_number("overfit_accuracy", overfit_accuracy, 0.0, 1.0, lo_open=True, hi_open=False,
                     owner="SanityChecks")
        for name, value in (("init_samples", init_samples), ("overfit_samples", overfit_samples),
                            ("overfit_steps", overfit_steps)):
            check_number(name, value, 1, integer=True, owner="SanityChecks")
        self.num_classes = num_classes
        self.check_init_loss = check_init_loss
        self.init_samples = init_samples
        self.init_tolerance = init_tolerance
        self.check_overfit = check_overfit
        self.overfit_samples = overfit_samples
        self.overfit_steps = overfit_steps
        self.overfit_lr = overfit_lr
        self.overfit_accuracy = overfit_accuracy
        self.overfit_loss = overfit_loss
        self.on_failure = on_failure
        self.seed = seed
        self.loss_fn = loss_fn
        self.done = False
        self.results: dict[str, Result] = {}
        self._fallback = ""

    @property
    def state_key(self) -> str:
        return cached_state_key(self, num_classes=self.num_classes, overfit_samples=self.overfit_samples)

    # -- data -------------------------------------------------------------------------------------------------
    def _samples(self, trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> tuple[Any, ...]:
        """The first ``n`` training samples, read from the dataset (the loader's sampler is not advanced)."""
        loader = first_train_loader(trainer)
        if loader is None:
            raise SanityCheckError("SanityChecks: no training dataloader")
        joined = first_samples(loader, n)
        return tuple(move_data_to_device(joined, pl_module.device))

    # -- checks -----------------------------------------------------------------------------------------------
    def _init_loss(self, pl_module: pl.LightningModule, batch: tuple[Any, ...]) -> Result:
        x, y = batch[0], batch[1]
        model = _copy_without_dropout(pl_module)
        with torch.no_grad():
            logits = model(x)
        num_classes = self.num_classes or int(logits.shape[-1])
        if num_classes < 2:
            return {"passed": True, "skipped": "fewer than 2 classes"}
        loss = float(nn.functional.cross_entropy(logits.float(), y))
        expected = math.log(num_classes)
        ratio = loss / expected
        passed = math.isfinite(loss) and abs(ratio - 1.0) <= self.init_tolerance
        return {"passed": passed, "loss": loss, "expected": expected, "ratio": ratio,
                "message": f"initial loss {loss:.4f} vs log({num_classes}) = {expected:.4f} (x{ratio:.2f})"}

    def _loss(self, model: nn.Module, batch: tuple[Any, ...], step: int) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(model, batch)
        if self.overfit_loss == "cross_entropy":
            return nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss, fell_back = training_step_loss(model, batch, step)
        if fell_back:
            self._fallback = "training_step needs the trainer: used cross-entropy on forward()"
        return loss

    def _overfit(self, pl_module: pl.LightningModule, batch: tuple[Any, ...]) -> Result:
        if not pl_module.automatic_optimization and self.loss_fn is None and self.overfit_loss == "training_step":
            return {"passed": True, "skipped": "manual optimization: set overfit_loss='cross_entropy' or loss_fn"}
        model = _copy_without_dropout(pl_module)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.overfit_lr)
        x, y = batch[0], batch[1]
        acc, step, loss = 0.0, 0, math.nan
        for step in range(1, self.overfit_steps + 1):
            opt.zero_grad(set_to_none=True)
            out = self._loss(model, batch, step - 1)
            out.backward()
            opt.step()
            loss = float(out.detach())
            if step % 5 == 0 or step == self.overfit_steps:
                with torch.no_grad():
                    acc = float((model(x).argmax(-1) == y).float().mean())
                if acc >= self.overfit_accuracy:
                    break
        passed = acc >= self.overfit_accuracy
        result_note = f" ({self._fallback})" if self._fallback else ""
        return {"passed": passed, "accuracy": acc, "steps": float(step), "loss": loss,
                "message": f"overfit {len(y)} samples: accuracy {acc:.3f} after {step} steps "
                           f"(need {self.overfit_accuracy:.2f} within {self.overfit_steps}){result_note}"}

    def run_checks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Result]:
        """Run the enabled checks and return their results (also kept in ``self.results``)."""
        results: dict[str, Result] = {}
        n = max(self.init_samples if self.check_init_loss else 0, self.overfit_samples if self.check_overfit else 0)
        if n == 0:
            return results
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `self.log` without a trainer, on the copies
            torch.manual_seed(self.seed)
            batch = self._samples(trainer, pl_module, n)
            if self.check_init_loss:
                results["init_loss"] = self._init_loss(pl_module, tuple(b[: self.init_samples] for b in batch))
            if self.check_overfit:
                sub = tuple(b[: self.overfit_samples] for b in batch)
                with torch.enable_grad():
                    results["overfit"] = self._overfit(pl_module, sub)
        self.results = results
        return results

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done:
            return
        self.done = True
        results = self.run_checks(trainer, pl_module)
        lines = [f"  [{'ok' if r['passed'] else 'FAILED'}] {name}: {r.get('message', r.get('skipped', ''))}"
                 for name, r in results.items()]
        report = "SanityChecks:\n" + "\n".join(lines)
        failed = [name for name, r in results.items() if not r["passed"]]
        if not failed:
            rank_zero_info(report)
            return
        if self.on_failure == "raise":
            raise SanityCheckError(f"{report}\nfailed: {failed}")
        rank_zero_warn(report)
        if self.on_failure == "stop":
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
