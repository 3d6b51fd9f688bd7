"""Lightning callbacks: they decide *when*; ``lit_tricks.functional`` decides *what*."""

__all__: list[str] = []
