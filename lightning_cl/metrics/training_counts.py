"""TrainingCounts: samples, correct predictions and summed loss of training batches, sum-reduced."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_cl.metrics.functional.counts import num_correct


class TrainingCounts(Metric):
    """Counts of training batches: samples seen, correct predictions, and loss summed per sample.

    ``update`` adds a batch's sample count, and (when given) its correct predictions and its mean
    loss times its size, so ``loss_sum / total`` is the sample-weighted mean loss. All three
    states are reduced by sum: exact on any number of processes.

    Example:
        >>> metric = TrainingCounts()
        >>> metric.update(torch.tensor([0, 1]), logits=torch.tensor([[2.0, 0.0], [2.0, 0.0]]), loss=torch.tensor(0.5))
        >>> metric.update(torch.tensor([1]), logits=torch.tensor([[0.0, 2.0]]), loss=torch.tensor(2.0))
        >>> metric.compute()
        {'correct': tensor(2), 'total': tensor(3), 'loss_sum': tensor(3.)}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    correct: Tensor
    total: Tensor
    loss_sum: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, target: Tensor, logits: Tensor | None = None, loss: Tensor | None = None) -> None:  # type: ignore[override]
        """Count one batch.

        Args:
            target: class ids ``[B]``.
            logits: ``[B, C]`` (or class ids ``[B]``) to count correct predictions.
            loss: the batch's mean loss (a number), weighted by ``B``.
        """
        size = target.numel()
        self.total += size
        if logits is not None:
            self.correct += num_correct(logits.detach(), target)
        if loss is not None:
            self.loss_sum += loss.detach().float() * size

    def compute(self) -> dict[str, Tensor]:
        """``{"correct", "total", "loss_sum"}``, summed over processes."""
        return {"correct": self.correct.clone(), "total": self.total.clone(), "loss_sum": self.loss_sum.clone()}
