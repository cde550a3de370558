"""Pure functions of the accuracy matrix and of counts."""

from lightning_cl.metrics.functional.counts import (
    accuracy,
    class_accuracy,
    confusion_counts,
    experience_accuracy,
    flip_counts,
    mean_loss,
    negative_flip_rate,
    num_correct,
    positive_flip_rate,
    samples_per_second,
    seen_classes_accuracy,
)
from lightning_cl.metrics.functional.stream import average_accuracy, backward_transfer, forgetting, forward_transfer

__all__ = [
    "accuracy",
    "average_accuracy",
    "backward_transfer",
    "class_accuracy",
    "confusion_counts",
    "experience_accuracy",
    "flip_counts",
    "forgetting",
    "forward_transfer",
    "mean_loss",
    "negative_flip_rate",
    "num_correct",
    "positive_flip_rate",
    "samples_per_second",
    "seen_classes_accuracy",
]
