"""Class-incremental streams: each experience brings new classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.core.data import InMemoryDataset, SubsetDataset, targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream


def resolve_class_order(classes: Sequence[int], class_order: Sequence[int] | None, seed: int) -> list[int]:
    """``class_order`` checked against ``classes``, or ``classes`` shuffled with ``seed`` when None."""
    if class_order is None:
        generator = torch.Generator().manual_seed(seed)
        return [classes[i] for i in torch.randperm(len(classes), generator=generator).tolist()]
    order = [int(c) for c in class_order]
    unknown = sorted(set(order) - set(classes))
    missing = sorted(set(classes) - set(order))
    duplicated = sorted({c for c in order if order.count(c) > 1})
    if unknown or missing or duplicated:
        problems = []
        if unknown:
            problems.append(f"unknown class ids {unknown}")
        if missing:
            problems.append(f"missing class ids {missing}")
        if duplicated:
            problems.append(f"repeated class ids {duplicated}")
        raise ValueError(
            f"`class_order`: expected a permutation of the dataset's classes {list(classes)}, "
            f"got {order} ({'; '.join(problems)})."
        )
    return order


def resolve_experience_sizes(
    num_classes: int, num_experiences: int | None, classes_per_experience: int | Sequence[int] | None
) -> list[int]:
    """How many classes each experience holds."""
    if classes_per_experience is None:
        if num_experiences is None:
            raise ValueError("`num_experiences`: give it or `classes_per_experience`; got neither.")
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        if num_experiences > num_classes:
            raise ValueError(
                f"`num_experiences`: expected at most {num_classes} (the number of classes), got {num_experiences}."
            )
        if num_classes % num_experiences:
            raise ValueError(
                f"`num_experiences`: {num_experiences} does not divide the {num_classes} classes evenly; "
                "choose a divisor or give `classes_per_experience` (an int or a list of sizes)."
            )
        return [num_classes // num_experiences] * num_experiences
    if isinstance(classes_per_experience, int) and not isinstance(classes_per_experience, bool):
        if classes_per_experience < 1 or num_classes % classes_per_experience:
            raise ValueError(
                f"`classes_per_experience`: expected a positive divisor of the {num_classes} classes, "
                f"got {classes_per_experience} (give a list of sizes for uneven experiences)."
            )
        sizes = [classes_per_experience] * (num_classes // classes_per_experience)
    else:
        sizes = [int(s) for s in classes_per_experience]  # type: ignore[union-attr]
        if any(s < 1 for s in sizes) or sum(sizes) != num_classes:
            raise ValueError(
                f"`classes_per_experience`: expected positive sizes summing to {num_classes} classes, got {sizes}."
            )
    if num_experiences is not None and num_experiences != len(sizes):
        raise ValueError(
            f"`num_experiences`: {num_experiences} disagrees with `classes_per_experience` {classes_per_experience}, "
            f"which makes {len(sizes)} experiences."
        )
    return sizes


def select(dataset: Dataset, indices: Tensor, targets: Tensor, task_labels: Tensor | None) -> Dataset:
    """Items ``indices`` of ``dataset`` with new targets: the tensor fast path when it applies."""
    if isinstance(dataset, (InMemoryDataset, SubsetDataset)):
        return dataset.subset(indices).relabel(targets, task_labels)  # attributes and transform groups kept
    return SubsetDataset(dataset, indices, targets, task_labels)


def split_by_class(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    task_labels: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
) -> tuple[Stream, Stream]:
    """The train and test streams of a class-incremental split (see :func:`class_incremental`)."""
    train_targets, test_targets = targets_of(train_dataset), targets_of(test_dataset)
    classes = torch.unique(train_targets).tolist()
    if (classes and classes[0] < 0) or (len(test_targets) and int(test_targets.min()) < 0):
        raise ValueError(
            "`train_dataset` / `test_dataset`: expected class ids >= 0 (they index the model's outputs), "
            f"got {min(classes[0], int(test_targets.min()))}."
        )
    order = resolve_class_order(classes, class_order, seed)
    sizes = resolve_experience_sizes(len(classes), num_experiences, classes_per_experience)
    streams: dict[str, list[Experience]] = {"train": [], "test": []}
    top = int(max(train_targets.max(), test_targets.max())) + 1
    start = 0
    for k, size in enumerate(sizes):
        group = order[start : start + size]
        start += size
        lookup = torch.full((top,), -1, dtype=torch.long)
        lookup[torch.tensor(group)] = torch.arange(size) if class_ids_from_zero_in_each_exp else torch.tensor(group)
        seen = tuple(sorted(lookup[torch.tensor(group)].tolist()))
        for name, dataset, targets in (("train", train_dataset, train_targets), ("test", test_dataset, test_targets)):
            index = torch.isin(targets, torch.tensor(group)).nonzero().squeeze(1)
            tasks = torch.full((len(index),), k, dtype=torch.long) if task_labels else None
            subset = select(dataset, index, lookup[targets[index]], tasks)
            streams[name].append(Experience(k, subset, seen, k if task_labels else 0))
    return Stream(streams["train"], "train"), Stream(streams["test"], "test")


def class_incremental(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    task_labels: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A class-incremental stream: the classes are split into groups, one group per experience.

    Any map-style dataset with integer targets works (``dataset.targets`` is used when present);
    an :class:`~lightning_cl.core.data.InMemoryDataset` keeps the batched fast path.

    Args:
        train_dataset: training samples ``(x, y)``.
        test_dataset: test samples ``(x, y)``, split the same way.
        num_experiences: number of experiences; must divide the number of classes unless
            ``classes_per_experience`` is given.
        classes_per_experience: classes per experience: one int, or one size per experience.
        class_order: the order in which classes arrive (a permutation of the dataset's classes);
            by default the classes are shuffled with ``seed``.
        seed: seed of the class order.
        task_labels: add the experience index as a task label: batches become ``(x, y, t)``.
        class_ids_from_zero_in_each_exp: renumber the classes of each experience from 0, in
            their arrival order (what :func:`task_incremental` does).
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Raises:
        ValueError: a number of experiences that does not split the classes, a class order that
            is not a permutation of the classes, or an empty experience.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.randn(40, 3), torch.arange(40) % 4)
        >>> dm = class_incremental(ds, ds, num_experiences=2, class_order=[3, 1, 0, 2])
        >>> [e.classes_in_this_experience for e in dm.train_stream]
        [(1, 3), (0, 2)]
    """
    train, test = split_by_class(
        train_dataset,
        test_dataset,
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        seed=seed,
        task_labels=task_labels,
        class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
    )
    return StreamDataModule(
        train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed
    )
