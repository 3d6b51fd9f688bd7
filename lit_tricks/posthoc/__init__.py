"""Choices made after training, from files a run left: an EMA of any length synthesized from
:class:`~lit_tricks.callbacks.PostHocEMA` snapshots (:mod:`lit_tricks.posthoc.ema`), greedy and uniform soups of a
run's snapshot members or of a sweep's members (:mod:`lit_tricks.posthoc.soup`), each evaluated on the validation
split with BatchNorm recalibrated (:mod:`lit_tricks.posthoc.evaluate`).

Import from the submodules; this package imports nothing on its own.
"""
