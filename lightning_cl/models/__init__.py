"""Dynamic heads (adapted to each experience automatically), reference backbones, a plain classifier."""

from lightning_cl.core.dynamic import DynamicModule
from lightning_cl.models.backbones import ResNet32, SimpleCNN, SlimResNet18
from lightning_cl.models.classifier import Classifier
from lightning_cl.models.incremental import IncrementalClassifier
from lightning_cl.models.mlp import MLP, MultiHeadMLP
from lightning_cl.models.multihead import MultiHeadClassifier, MultiHeadNet
from lightning_cl.models.pnn import PNN
from lightning_cl.models.vae import MlpVAE

__all__ = [
    "MLP",
    "PNN",
    "Classifier",
    "DynamicModule",
    "IncrementalClassifier",
    "MlpVAE",
    "MultiHeadClassifier",
    "MultiHeadMLP",
    "MultiHeadNet",
    "ResNet32",
    "SimpleCNN",
    "SlimResNet18",
]
