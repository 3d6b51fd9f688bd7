"""Reference models: an MLP, a small CNN for 8x8/28x28/32x32 images, and any torchvision classifier by name."""

from lit_tricks.models.cnn import SmallCNN
from lit_tricks.models.heads import find_head
from lit_tricks.models.mlp import MLP
from lit_tricks.models.tv import torchvision_model

__all__ = ["MLP", "SmallCNN", "find_head", "torchvision_model"]
