"""Pure functions of the accuracy matrix."""

from lightning_cl.metrics.functional.stream import average_accuracy, backward_transfer, forgetting, forward_transfer

__all__ = ["average_accuracy", "backward_transfer", "forgetting", "forward_transfer"]
