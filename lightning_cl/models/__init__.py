"""Reference backbones and a plain classifier LightningModule."""

from lightning_cl.models.classifier import Classifier
from lightning_cl.models.mlp import MLP

__all__ = ["MLP", "Classifier"]
