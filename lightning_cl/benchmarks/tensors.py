"""Streams from tensors already in memory."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.core.data import InMemoryDataset, Transform
from lightning_cl.core.datamodule import StreamDataModule


def from_tensors(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    task_labels: bool = False,
    transform: Transform | None = None,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A class-incremental stream over in-memory tensors (the batched fast path).

    Args:
        x_train: training inputs ``[N, ...]``.
        y_train: training class ids ``[N]``.
        x_test: test inputs ``[M, ...]``.
        y_test: test class ids ``[M]``.
        transform: optional batched transform of the inputs (e.g. normalisation).

    The other arguments are those of :func:`~lightning_cl.benchmarks.class_incremental`.

    Example:
        >>> import torch
        >>> x, y = torch.randn(60, 5), torch.arange(60) % 6
        >>> dm = from_tensors(x, y, x, y, num_experiences=3, class_order=range(6))
        >>> dm.num_experiences, dm.num_classes, len(dm.train_stream[0])
        (3, 6, 20)
    """
    return class_incremental(
        InMemoryDataset(x_train, y_train, transform=transform),
        InMemoryDataset(x_test, y_test, transform=transform),
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        seed=seed,
        task_labels=task_labels,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
    )
