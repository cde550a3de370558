"""Instance-incremental streams ("New Instances"): new samples of the same classes in every experience."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lightning_cl.benchmarks._common import check_class_ids, positive_int
from lightning_cl.benchmarks.class_incremental import select
from lightning_cl.core.data import targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream


def split_by_instance(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int,
    seed: int = 0,
    balance_classes: bool = False,
    task_labels: bool = False,
) -> tuple[Stream, Stream]:
    """The train and test streams of an instance-incremental split (see :func:`instance_incremental`)."""
    num_experiences = positive_int(num_experiences, "num_experiences")
    targets, test_targets = targets_of(train_dataset), targets_of(test_dataset)
    check_class_ids(targets, "train_dataset")
    check_class_ids(test_targets, "test_dataset")
    if num_experiences > len(targets):
        raise ValueError(
            f"`num_experiences`: expected at most {len(targets)} (the number of train samples), got {num_experiences}."
        )
    if len(test_targets) == 0:
        raise ValueError("`test_dataset`: expected at least one test sample, got an empty dataset.")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=generator)
    if balance_classes:
        # the shuffled samples grouped by class, then dealt round-robin: every experience gets
        # floor or ceil of 1/num_experiences of every class, and the sizes differ by at most one
        order = order[torch.sort(targets[order], stable=True).indices]
        parts = [order[k::num_experiences] for k in range(num_experiences)]
    else:
        parts = list(torch.tensor_split(order, num_experiences))
    train = []
    for k, part in enumerate(parts):
        index = part.sort().values  # storage order: better locality, same set
        tasks = torch.full((len(index),), k, dtype=torch.long) if task_labels else None
        classes = tuple(torch.unique(targets[index]).tolist())
        data = select(train_dataset, index, targets[index], tasks)
        train.append(Experience(k, data, classes, k if task_labels else 0))
    everything = torch.arange(len(test_targets))
    test_classes = tuple(torch.unique(test_targets).tolist())
    if task_labels:
        # one test set cannot carry T task labels: it is repeated, once per task
        test = [
            Experience(
                k,
                select(test_dataset, everything, test_targets, torch.full_like(test_targets, k)),
                test_classes,
                k,
            )
            for k in range(num_experiences)
        ]
    else:
        test = [Experience(0, select(test_dataset, everything, test_targets, None), test_classes, 0)]
    return Stream(train, "train"), Stream(test, "test")


def instance_incremental(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int,
    seed: int = 0,
    balance_classes: bool = False,
    task_labels: bool = False,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """An instance-incremental stream: every experience brings new samples of the same classes.

    The train samples are shuffled with ``seed`` and cut into ``num_experiences`` parts whose
    sizes differ by at most one (Avalanche's ``ni_benchmark`` / ``new_instances_benchmark``,
    Lomonaco & Maltoni's "New Instances" scenario). With ``balance_classes`` the split is
    stratified: each experience receives ``floor`` or ``ceil`` of ``1 / num_experiences`` of the
    samples of every class (a class with fewer samples than experiences is missing from some).

    The test stream is the whole test set as ONE experience, as in Avalanche: the accuracy matrix
    is ``[num_experiences, 1]`` (column 0: accuracy on the whole test set after each experience)
    and forgetting / backward transfer are computed on that column. With ``task_labels`` the test
    set is repeated once per experience, each copy labelled with that experience's task, so a
    multi-head model is evaluated with every head (a ``[T, T]`` matrix).

    Each train experience's ``classes_in_this_experience`` are the classes present in it.
    Any map-style dataset with integer targets works; an
    :class:`~lightning_cl.core.data.InMemoryDataset` keeps the batched fast path.

    Args:
        train_dataset: training samples ``(x, y)``.
        test_dataset: test samples ``(x, y)``.
        num_experiences: number of experiences (at most the number of train samples).
        seed: seed of the shuffle that assigns samples to experiences.
        balance_classes: give every experience the same share of every class (stratified).
        task_labels: add the experience index as a task label: batches become ``(x, y, t)``.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Raises:
        ValueError: a ``num_experiences`` below 1 or above the number of train samples, negative
            class ids, or an empty test set.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.randn(40, 3), torch.arange(40) % 4)
        >>> dm = instance_incremental(ds, ds, num_experiences=4, balance_classes=True)
        >>> [len(e) for e in dm.train_stream], len(dm.test_stream)
        ([10, 10, 10, 10], 1)
        >>> [e.classes_in_this_experience for e in dm.train_stream][0]
        (0, 1, 2, 3)
    """
    train, test = split_by_instance(
        train_dataset,
        test_dataset,
        num_experiences=num_experiences,
        seed=seed,
        balance_classes=balance_classes,
        task_labels=task_labels,
    )
    return StreamDataModule(
        train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed
    )
