"""Pure tensor/parameter functions (torch only: no Lightning, no Hydra, nothing else of ours).

Import from the submodules, e.g. ``from lit_tricks.functional.ema import ema_update_``.
"""

__all__: list[str] = []
