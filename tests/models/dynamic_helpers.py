"""Helpers shared by the tests of the dynamic models: small task-incremental streams."""

from __future__ import annotations

from typing import Any

import torch

from lightning_cl.benchmarks import task_incremental
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule


def task_stream(num_experiences: int = 3, per_class: int = 20, num_classes: int = 6, **kwargs: Any) -> StreamDataModule:
    """A small task-incremental stream of Gaussian blobs in 8-D: task k holds classes 2k, 2k+1 (as 0, 1)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = (torch.randn(num_classes, 8, generator=g) * 3)[y] + torch.randn(len(y), 8, generator=g)
    data = InMemoryDataset(x, y)
    kwargs.setdefault("batch_size", 16)
    return task_incremental(data, data, num_experiences=num_experiences, class_order=list(range(num_classes)), **kwargs)


def conflicting_task_stream(num_experiences: int = 3, per_class: int = 30, **kwargs: Any) -> StreamDataModule:
    """Task-incremental over two blobs whose labels swap from one task to the next.

    A model that uses the task label learns every task; one shared head without it must forget.
    """
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 8, generator=g) * 3
    y = torch.arange(2 * num_experiences).repeat_interleave(per_class)
    blob = (y % 2) ^ ((y // 2) % 2)  # task k, class 2k + j: blob j, or 1 - j for odd k
    x = centers[blob] + torch.randn(len(y), 8, generator=g)
    kwargs.setdefault("batch_size", 16)
    return task_incremental(
        InMemoryDataset(x, y),
        InMemoryDataset(x, y),
        num_experiences=num_experiences,
        class_order=list(range(2 * num_experiences)),
        **kwargs,
    )


def whole(dataset: Any) -> tuple[torch.Tensor, ...]:
    """Every item of an in-memory dataset as stacked tensors ``(x, y[, t])``."""
    return tuple(dataset.__getitems__(list(range(len(dataset)))).tensors)
