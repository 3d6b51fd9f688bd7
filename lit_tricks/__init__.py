"""lit_tricks: the tricks of training neural networks for Lightning and Hydra."""

__version__ = "0.1.0"
__all__ = ["__version__"]
