"""Reference models: an MLP, a small CNN for 8x8/28x28/32x32 images, the MNIST-1D paper's 1-D CNN and GRU, and any
torchvision classifier by name."""

from lit_tricks.models.cnn import SmallCNN
from lit_tricks.models.cnn1d import ConvNet1d
from lit_tricks.models.gru1d import GRU1d
from lit_tricks.models.heads import find_head
from lit_tricks.models.mlp import MLP
from lit_tricks.models.tv import torchvision_model

__all__ = ["MLP", "ConvNet1d", "GRU1d", "SmallCNN", "find_head", "torchvision_model"]
