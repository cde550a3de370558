"""Helpers shared by the scenario generators: argument checks, subsets, apportioning counts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.core.data import ConcatDataset, InMemoryDataset, SubsetDataset, targets_of


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
    return value


def ratio(value: Any, name: str, *, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (ends excluded as asked), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}`: expected a number, got {type(value).__name__}.")
    v = float(value)
    if not (v > 0.0 if low_open else v >= 0.0) or not (v < 1.0 if high_open else v <= 1.0):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"`{name}`: expected a number in {interval}, got {value!r}.")
    return v


def check_class_ids(targets: Tensor, name: str) -> None:
    """Class ids index the model's outputs: negative ones are an error naming ``name``."""
    if len(targets) and int(targets.min()) < 0:
        raise ValueError(
            f"`{name}`: expected class ids >= 0 (they index the model's outputs), got {int(targets.min())}."
        )


def take(dataset: Dataset, index: Tensor, task_label: int = 0) -> Dataset:
    """Items ``index`` (positions) of an experience's dataset, keeping targets and task labels.

    Datasets of this package subset themselves (the tensor fast path, attributes, transform
    groups and ``collate_fn`` stay); any other dataset
    is wrapped in a :class:`SubsetDataset`, which needs the task labels up front: the dataset's
    ``task_labels`` when it has them, else ``task_label`` for samples that carry one.
    """
    if isinstance(dataset, (InMemoryDataset, SubsetDataset, ConcatDataset)):
        return dataset.subset(index)
    targets = targets_of(dataset)
    tasks = getattr(dataset, "task_labels", None)
    if tasks is None and len(targets) and len(dataset[0]) > 2:
        tasks = torch.full((len(targets),), task_label, dtype=torch.long)
    return SubsetDataset(dataset, index, targets[index], None if tasks is None else torch.as_tensor(tasks)[index])


def apportion(total: int, weights: Tensor) -> Tensor:
    """``total`` split in integers proportional to ``weights`` (largest remainder; ties to the first).

    Example:
        >>> apportion(10, torch.tensor([1.0, 1.0, 1.0])).tolist()
        [4, 3, 3]
    """
    w = weights.double()
    share = total * w / w.sum()
    counts = share.floor().long()
    rest = total - int(counts.sum())
    order = torch.argsort(-(share - counts), stable=True)
    counts[order[:rest]] += 1
    return counts
