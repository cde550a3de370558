"""StreamConfusionMatrix: one confusion matrix per test experience, sum-reduced across processes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_cl.metrics.functional.counts import confusion_counts


def _check_index(experience: int, num_experiences: int) -> None:
    if not 0 <= experience < num_experiences:
        raise ValueError(f"`experience`: expected an index in [0, {num_experiences}), got {experience}.")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
    return value


class StreamConfusionMatrix(Metric):
    """Confusion matrix ``[T, C, C]`` of a test stream: ``M[j, t, p]`` counts the samples of test
    experience ``j`` with true class ``t`` predicted as ``p``.

    Class accuracy, accuracy on the classes seen so far and per-experience accuracy follow from it
    (:func:`~lightning_cl.metrics.functional.class_accuracy`,
    :func:`~lightning_cl.metrics.functional.seen_classes_accuracy`,
    :func:`~lightning_cl.metrics.functional.experience_accuracy`). The state is one integer tensor
    reduced by sum, so the counts are exact on any number of processes (each sample counted by
    one rank) with a single all-reduce; it holds ``T * C * C`` integers (10 experiences of
    CIFAR-100: 100,000).

    Args:
        num_experiences: number of test experiences ``T``.
        num_classes: number of classes ``C``; every prediction and target must be below it (a
            model with more outputs than the stream has classes needs ``C`` = its outputs).

    Example:
        >>> metric = StreamConfusionMatrix(num_experiences=2, num_classes=2)
        >>> metric.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]), experience=0)
        >>> metric.update(torch.tensor([1]), torch.tensor([1]), experience=1)
        >>> metric.compute()
        tensor([[[1, 1],
                 [0, 0]],
        <BLANKLINE>
                [[0, 0],
                 [0, 1]]])
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    confusion: Tensor

    def __init__(self, num_experiences: int, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.num_experiences = _positive_int(num_experiences, "num_experiences")
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.add_state(
            "confusion", torch.zeros(num_experiences, num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor, experience: int) -> None:  # type: ignore[override]
        """Count a batch of test experience ``experience``.

        Args:
            preds: logits ``[B, C']`` (argmax taken) or predicted class ids ``[B]``.
            target: class ids ``[B]``.
            experience: index of the test experience the batch belongs to.
        """
        _check_index(experience, self.num_experiences)
        self.confusion[experience] += confusion_counts(preds, target, self.num_classes)

    def compute(self) -> Tensor:
        """The counts ``[T, C, C]``, summed over processes."""
        return self.confusion.clone()
