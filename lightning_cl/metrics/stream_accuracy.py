"""StreamAccuracy: correct and total counts per test experience, sum-reduced across processes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class StreamAccuracy(Metric):
    """Accuracy on each experience of a test stream.

    The states are two fixed-size count vectors reduced by sum, so the result is exact across any
    number of processes (each sample is counted by exactly one rank) with a single all-reduce.

    Args:
        num_experiences: number of test experiences.

    Example:
        >>> metric = StreamAccuracy(num_experiences=2)
        >>> metric.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]), experience=0)
        >>> metric.update(torch.tensor([[0.0, 3.0]]), torch.tensor([1]), experience=1)
        >>> metric.compute()
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    correct: Tensor
    total: Tensor

    def __init__(self, num_experiences: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        self.num_experiences = num_experiences
        self.add_state("correct", torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, experience: int) -> None:  # type: ignore[override]
        """Count a batch of test experience ``experience``.

        Args:
            preds: logits ``[B, C]`` or predicted class ids ``[B]``.
            target: class ids ``[B]``.
            experience: index of the test experience the batch belongs to.
        """
        if not 0 <= experience < self.num_experiences:
            raise ValueError(f"`experience`: expected an index in [0, {self.num_experiences}), got {experience}.")
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=-1)
        if preds.shape != target.shape:
            raise ValueError(
                f"`preds`: expected logits [B, C] or class ids [B] matching `target` {tuple(target.shape)}, "
                f"got shape {tuple(preds.shape)}."
            )
        self.correct[experience] += (preds == target).sum()
        self.total[experience] += target.numel()

    def compute(self) -> Tensor:
        """Accuracy per experience in [0, 1]; NaN for an experience with no sample counted."""
        return self.correct.double() / self.total.double()
