"""Weight variants: how a callback offers other weights (e.g. the EMA) for evaluation beside the trained ones.

The one interface through which callbacks and a LightningModule cooperate on evaluation weights:

- A module that can evaluate variants implements :class:`SupportsWeightVariants`: it owns a
  ``weight_variants`` attribute holding a :class:`WeightVariants` registry (create it in ``__init__``), and in its
  validation/test steps computes its metrics once normally and once inside each variant's context, naming the
  variant's metrics with :meth:`WeightVariants.metric_name`:

  ```python
  class MyModule(pl.LightningModule):
      def __init__(self) -> None:
          super().__init__()
          self.weight_variants = WeightVariants()
          ...

      def validation_step(self, batch, batch_idx):
          self.log("val/acc", self.accuracy(batch))
          for name, use in self.weight_variants.items():
              with use():  # the variant's weights are in the model inside the block
                  self.log(self.weight_variants.metric_name("val/acc", name), self.accuracy(batch))
  ```

  :class:`~lit_tricks.modules.trick_module.TrickModule` does this for all its metrics.
- A callback that owns other weights registers them: ``EMAWeights(validate_both=True)`` calls
  ``pl_module.weight_variants.add("ema", context)`` at setup (``val/acc`` and ``val/acc_ema`` are then logged side
  by side) and :meth:`WeightVariants.remove` at teardown. A module without the attribute gets nothing added.
- A callback that must know which weights produced a metric asks :meth:`WeightVariants.variant_of`:
  ``EarlyStopping(monitor="val/loss_ema", restore_best_weights=True)`` snapshots the weights inside that variant's
  context. The answer comes from the names the module built with ``metric_name``, never from the metric's spelling.

A copy of a module (``copy.deepcopy``, pickling) gets an empty registry: the contexts act on the original's weights.
What a training run asks its callbacks after ``fit`` (which variant was evaluated, its files) is
:mod:`lit_tricks.callback_protocols`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

__all__ = ["SupportsWeightVariants", "VariantContext", "WeightVariants", "weight_variants_of"]

#: A variant's context factory: ``with context():`` puts the variant's weights into the model and back after.
VariantContext = Callable[[], AbstractContextManager[None]]


class WeightVariants:
    """Named weight variants a module evaluates beside its own weights, and which metric came from which variant."""

    def __init__(self) -> None:
        self._contexts: dict[str, VariantContext] = {}
        self._metric_variant: dict[str, str] = {}

    def add(self, name: str, context: VariantContext) -> None:
        """Offer variant ``name``; ``context()`` swaps its weights in and back out."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a weight variant needs a non-empty str name, got {name!r}")
        self._contexts[name] = context

    def remove(self, name: str, context: VariantContext | None = None) -> None:
        """Withdraw variant ``name`` (only when it is still ``context``, if given); no error when it is absent."""
        if name in self._contexts and (context is None or self._contexts[name] == context):
            del self._contexts[name]

    def items(self) -> list[tuple[str, VariantContext]]:
        """``(name, context)`` of every variant on offer, in the order they were added."""
        return list(self._contexts.items())

    def context(self, name: str) -> VariantContext | None:
        return self._contexts.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._contexts

    def __len__(self) -> int:
        return len(self._contexts)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._contexts))

    def metric_name(self, metric: str, variant: str) -> str:
        """The name of ``metric`` computed with ``variant``'s weights (``val/acc``, ``ema`` -> ``val/acc_ema``)."""
        name = f"{metric}_{variant}"
        self._metric_variant[name] = variant
        return name

    def variant_of(self, metric: str) -> str | None:
        """The variant whose weights produced ``metric`` (named by :meth:`metric_name`), or None: the module's own."""
        return self._metric_variant.get(metric)

    def metrics_of(self, variant: str) -> list[str]:
        """The metric names built for ``variant`` so far."""
        return [m for m, v in self._metric_variant.items() if v == variant]

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightVariants:
        return WeightVariants()  # the contexts swap weights of the original module, not of a copy

    def __getstate__(self) -> dict[str, Any]:
        return {"_contexts": {}, "_metric_variant": {}}

    def __repr__(self) -> str:
        return f"WeightVariants({list(self._contexts)})"


@runtime_checkable
class SupportsWeightVariants(Protocol):
    """A LightningModule that evaluates the weight variants registered in its ``weight_variants`` (see module doc)."""

    weight_variants: WeightVariants


def weight_variants_of(module: object) -> WeightVariants | None:
    """``module.weight_variants`` when ``module`` implements :class:`SupportsWeightVariants`, else None."""
    variants = getattr(module, "weight_variants", None)
    return variants if isinstance(variants, WeightVariants) else None
