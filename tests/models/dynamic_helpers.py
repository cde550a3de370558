"""Helpers shared by the tests of the dynamic models: small task-incremental streams, checkpointing trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl.benchmarks import task_incremental
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule
from tests.conftest import quiet_trainer


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


def checkpointing_trainer(path: Path, max_epochs: int = 2) -> L.Trainer:
    """A quiet trainer that saves a checkpoint ``{epoch}.ckpt`` in ``path`` after every epoch."""
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[saver])
