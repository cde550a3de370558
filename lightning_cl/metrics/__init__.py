"""Continual-learning metrics: torchmetrics classes, the ContinualMetrics callback, and pure functions."""

from lightning_cl.metrics import functional
from lightning_cl.metrics.callback import ContinualMetrics
from lightning_cl.metrics.flips import FlipCounts
from lightning_cl.metrics.stream_accuracy import StreamAccuracy
from lightning_cl.metrics.stream_confusion import StreamConfusionMatrix
from lightning_cl.metrics.stream_loss import StreamLoss
from lightning_cl.metrics.stream_topk import StreamTopKAccuracy
from lightning_cl.metrics.training_counts import TrainingCounts

__all__ = [
    "ContinualMetrics",
    "FlipCounts",
    "StreamAccuracy",
    "StreamConfusionMatrix",
    "StreamLoss",
    "StreamTopKAccuracy",
    "TrainingCounts",
    "functional",
]
