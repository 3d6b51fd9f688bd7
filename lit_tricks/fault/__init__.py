"""Fault tolerance: atomic checkpoint writes, exact resume, preemption handling."""

__all__: list[str] = []
