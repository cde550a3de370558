"""StreamTopKAccuracy: top-k correct and total counts per test experience, sum-reduced."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_cl.metrics.functional.counts import num_correct
from lightning_cl.metrics.stream_confusion import _check_index, _positive_int


class StreamTopKAccuracy(Metric):
    """Top-k accuracy counts per test experience: a sample is right when its target is among the
    ``top_k`` highest logits.

    ``compute`` returns the counts (``correct`` and ``total`` per experience, summed over
    processes: exact with any number of them); the accuracy of experience ``j`` is
    ``correct[j] / total[j]`` and that of the whole stream ``correct.sum() / total.sum()``
    (:func:`~lightning_cl.metrics.functional.accuracy`). With ``top_k=1`` this is the accuracy of
    the argmax, as in :class:`~lightning_cl.metrics.StreamAccuracy`.

    Args:
        num_experiences: number of test experiences.
        top_k: how many of the highest logits count as a hit.

    Example:
        >>> metric = StreamTopKAccuracy(num_experiences=2, top_k=2)
        >>> metric.update(torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]]), torch.tensor([2, 1]), experience=0)
        >>> metric.compute()
        {'correct': tensor([2, 0]), 'total': tensor([2, 0])}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    correct: Tensor
    total: Tensor

    def __init__(self, num_experiences: int, top_k: int = 5, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.num_experiences = _positive_int(num_experiences, "num_experiences")
        self.top_k = _positive_int(top_k, "top_k")
        self.add_state("correct", torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, experience: int) -> None:  # type: ignore[override]
        """Count a batch of test experience ``experience``.

        Args:
            logits: ``[B, C]`` with ``C >= top_k`` (class ids ``[B]`` are accepted when ``top_k=1``).
            target: class ids ``[B]``.
            experience: index of the test experience.
        """
        _check_index(experience, self.num_experiences)
        self.correct[experience] += num_correct(logits, target, self.top_k)
        self.total[experience] += target.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"correct": [T], "total": [T]}``, summed over processes (0-d when ``T == 1``: torchmetrics squeezes)."""
        return {"correct": self.correct.clone(), "total": self.total.clone()}
