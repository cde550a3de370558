"""Domain-incremental streams: the same classes, a new input distribution per experience."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_cl.core.data import InMemoryDataset, SubsetDataset, targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream


def _with_domain(dataset: Dataset, transform: Callable[[Any], Any], task_label: int | None) -> Dataset:
    targets = targets_of(dataset)
    tasks = None if task_label is None else torch.full((len(targets),), task_label, dtype=torch.long)
    if isinstance(dataset, (InMemoryDataset, SubsetDataset)):
        return dataset.relabel(targets, tasks).with_transform(transform)
    return SubsetDataset(dataset, torch.arange(len(targets)), targets, tasks, transform)


def split_by_domain(
    train_dataset: Dataset,
    test_dataset: Dataset,
    transforms: Sequence[Callable[[Any], Any]],
    *,
    task_labels: bool = False,
) -> tuple[Stream, Stream]:
    """The train and test streams of a domain-incremental stream (see :func:`domain_incremental`)."""
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence) or len(transforms) == 0:
        raise ValueError(f"`transforms`: expected a non-empty sequence of callables, got {transforms!r}.")
    for k, transform in enumerate(transforms):
        if not callable(transform):
            raise TypeError(f"`transforms[{k}]`: expected a callable, got {type(transform).__name__}.")
    classes = tuple(torch.unique(targets_of(train_dataset)).tolist())
    streams: dict[str, list[Experience]] = {"train": [], "test": []}
    for k, transform in enumerate(transforms):
        for name, dataset in (("train", train_dataset), ("test", test_dataset)):
            data = _with_domain(dataset, transform, k if task_labels else None)
            streams[name].append(Experience(k, data, classes, k if task_labels else 0))
    return Stream(streams["train"], "train"), Stream(streams["test"], "test")


def domain_incremental(
    train_dataset: Dataset,
    test_dataset: Dataset,
    transforms: Sequence[Callable[[Any], Any]],
    *,
    task_labels: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """One experience per input transform, all over the same data and classes (e.g. PermutedMNIST).

    On an :class:`~lightning_cl.core.data.InMemoryDataset` each transform receives a whole batch
    ``[B, ...]`` (after the dataset's own transform); on any other dataset it receives one sample.

    Args:
        train_dataset: training samples ``(x, y)``.
        test_dataset: test samples ``(x, y)``.
        transforms: one input transform per experience.
        task_labels: add the experience index as a task label.
        seed: the seed the transforms were drawn with (recorded by the datamodule).
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 0, 1]))
        >>> dm = domain_incremental(ds, ds, [lambda x: x, lambda x: x.flip(-1)])
        >>> dm.train_stream[1].dataset[0]
        (tensor([1., 0.]), tensor(0))
    """
    train, test = split_by_domain(train_dataset, test_dataset, transforms, task_labels=task_labels)
    return StreamDataModule(
        train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed
    )
