"""Pure tensor/parameter functions and the Trainer-free state objects the callbacks adapt (torch only: no Lightning,
no Hydra, nothing else of ours): ``ema_state.EMAState``, ``ensemble_members.EnsembleMembers``,
``divergence.DivergenceDetector``, ``clip_history.ClipHistory``, ``step_undo.StepUndo``.

Import from the submodules, e.g. ``from lit_tricks.functional.ema import ema_update_``.
"""

__all__: list[str] = []
