"""Dataset-incremental streams: one data set per experience (e.g. MNIST, then Fashion-MNIST, then KMNIST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks._common import check_class_ids
from lightning_cl.benchmarks.class_incremental import select
from lightning_cl.core.data import targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream

LABEL_SPACES = ("disjoint", "shared")


def _as_datasets(value: Any, name: str) -> list[Dataset]:
    if isinstance(value, (str, bytes, Dataset)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}`: expected a sequence of datasets (one per experience), got {type(value).__name__}.")
    if len(value) == 0:
        raise ValueError(f"`{name}`: expected at least one dataset, got none.")
    for k, dataset in enumerate(value):
        if isinstance(dataset, (str, bytes)) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"`{name}[{k}]`: expected a map-style dataset, got {type(dataset).__name__}.")
        if len(dataset) == 0:
            raise ValueError(f"`{name}[{k}]` ({type(dataset).__name__}) is empty; every experience needs samples.")
    return list(value)


def _input_shape(dataset: Dataset) -> tuple[int, ...] | None:
    """Shape of the first input (a tensor, an array or a PIL image); None when it has none."""
    sample = dataset[0]
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.asarray(x).shape
        except Exception:
            return None
    return tuple(int(s) for s in shape)


def _check_shapes(named: Sequence[tuple[str, Dataset]]) -> None:
    shapes = [(name, type(d).__name__, _input_shape(d)) for name, d in named]
    known = [s for s in shapes if s[2] is not None]
    if len({s[2] for s in known}) > 1:
        listing = ", ".join(f"{name} ({kind}): {shape}" for name, kind, shape in known)
        raise ValueError(
            "`train_datasets` / `test_datasets`: expected inputs of one shape in every data set (one model "
            f"reads them all), got {listing}. Give the data sets transforms that resize them to one shape."
        )


def split_by_dataset(
    train_datasets: Sequence[Dataset],
    test_datasets: Sequence[Dataset],
    *,
    label_space: Literal["disjoint", "shared"] = "disjoint",
    task_labels: bool = False,
) -> tuple[Stream, Stream]:
    """The train and test streams of a dataset-incremental stream (see :func:`dataset_incremental`)."""
    trains, tests = _as_datasets(train_datasets, "train_datasets"), _as_datasets(test_datasets, "test_datasets")
    if len(trains) != len(tests):
        raise ValueError(f"`test_datasets`: expected one test set per train set ({len(trains)}), got {len(tests)}.")
    if label_space not in LABEL_SPACES:
        raise ValueError(f"`label_space`: expected one of {list(LABEL_SPACES)}, got {label_space!r}.")
    _check_shapes(
        [(f"train_datasets[{k}]", d) for k, d in enumerate(trains)]
        + [(f"test_datasets[{k}]", d) for k, d in enumerate(tests)]
    )
    streams: dict[str, list[Experience]] = {"train": [], "test": []}
    offset = 0
    for k, (train, test) in enumerate(zip(trains, tests)):
        targets: dict[str, Tensor] = {"train": targets_of(train), "test": targets_of(test)}
        check_class_ids(targets["train"], f"train_datasets[{k}]")
        check_class_ids(targets["test"], f"test_datasets[{k}]")
        for name, dataset in (("train", train), ("test", test)):
            y = targets[name] + offset
            tasks = torch.full_like(y, k) if task_labels else None
            data = select(dataset, torch.arange(len(y)), y, tasks)
            classes = tuple(torch.unique(y).tolist())
            streams[name].append(Experience(k, data, classes, k if task_labels else 0))
        if label_space == "disjoint":
            # ids stay contiguous: the next data set starts after the largest id of this one
            offset += int(max(targets["train"].max(), targets["test"].max())) + 1
    return Stream(streams["train"], "train"), Stream(streams["test"], "test")


def dataset_incremental(
    train_datasets: Sequence[Dataset],
    test_datasets: Sequence[Dataset],
    *,
    label_space: Literal["disjoint", "shared"] = "disjoint",
    task_labels: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """One data set per experience: experience ``k`` trains on ``train_datasets[k]``.

    With ``label_space="disjoint"`` the class ids of data set ``k`` are shifted past those of
    the data sets before it: the offset of data set ``k`` is the sum over the earlier data sets
    of (their largest class id + 1), so MNIST then Fashion-MNIST then KMNIST give classes 0-9,
    10-19 and 20-29 (a class-incremental stream over 30 classes). With ``"shared"`` the ids are
    kept (e.g. digits from MNIST then from USPS: a domain-incremental stream); with
    ``task_labels`` added, the usual task-incremental multi-head setting.

    Every data set must give inputs of one shape (one model reads them all); give them transforms
    that resize, e.g. ``Grayscale`` + ``Resize``. Any map-style dataset with integer targets
    works; an :class:`~lightning_cl.core.data.InMemoryDataset` keeps the batched fast path.

    Args:
        train_datasets: one training set per experience, samples ``(x, y)``.
        test_datasets: the matching test sets, in the same order.
        label_space: ``"disjoint"`` (offset class ids) or ``"shared"`` (keep them).
        task_labels: add the experience index as a task label: batches become ``(x, y, t)``.
        seed: recorded by the datamodule (the stream itself involves no randomness).
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Raises:
        TypeError: if the data sets are not a sequence of map-style datasets.
        ValueError: an empty data set, as many test sets as train sets missing, an unknown
            ``label_space``, inputs of different shapes (naming the data sets), negative class ids.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> a = InMemoryDataset(torch.randn(20, 3), torch.arange(20) % 10)
        >>> b = InMemoryDataset(torch.randn(10, 3), torch.arange(10) % 5)
        >>> dm = dataset_incremental([a, b], [a, b])
        >>> [e.classes_in_this_experience for e in dm.train_stream][1]
        (10, 11, 12, 13, 14)
        >>> dm = dataset_incremental([a, b], [a, b], label_space="shared", task_labels=True)
        >>> x, y, t = dm.train_stream[1].dataset[7]
        >>> int(y), int(t)
        (2, 1)
    """
    train, test = split_by_dataset(train_datasets, test_datasets, label_space=label_space, task_labels=task_labels)
    return StreamDataModule(
        train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed
    )
