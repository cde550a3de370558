"""Task-incremental streams: class-incremental, with task labels and per-task class ids."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.core.datamodule import StreamDataModule


def task_incremental(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A task-incremental stream: experience ``k`` is task ``k``, its classes counted from 0.

    Batches are ``(x, y, t)``; a model whose ``forward(x, task_labels)`` takes the task labels
    gets them in training (through its own ``training_step``) and in stream evaluation.
    Arguments are those of :func:`~lightning_cl.benchmarks.class_incremental`.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.randn(40, 3), torch.arange(40) % 4)
        >>> dm = task_incremental(ds, ds, num_experiences=2, class_order=[3, 1, 0, 2])
        >>> [(e.task_label, e.classes_in_this_experience) for e in dm.train_stream]
        [(0, (0, 1)), (1, (0, 1))]
        >>> x, y, t = dm.train_stream[1].dataset[0]
        >>> int(t)
        1
    """
    return class_incremental(
        train_dataset,
        test_dataset,
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        seed=seed,
        task_labels=True,
        class_ids_from_zero_in_each_exp=True,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
    )
