"""Diagnostics that run a LightningModule's own steps outside a Trainer (the callbacks' shared helpers)."""

__all__: list[str] = []
