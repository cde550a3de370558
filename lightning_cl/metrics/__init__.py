"""Continual-learning metrics: torchmetrics classes and pure functions of the accuracy matrix."""

from lightning_cl.metrics import functional
from lightning_cl.metrics.stream_accuracy import StreamAccuracy

__all__ = ["StreamAccuracy", "functional"]
