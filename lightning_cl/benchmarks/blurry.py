"""Blurry streams: classes have a main experience but leak into the others, so boundaries blur."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks._common import apportion, check_class_ids, positive_int, ratio
from lightning_cl.benchmarks.class_incremental import resolve_class_order, resolve_experience_sizes, select
from lightning_cl.core.data import targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream


def _spread_weights(main: int, num_experiences: int, spread_decay: float) -> Tensor:
    distance = (torch.arange(num_experiences) - main).abs().double()
    weights = spread_decay**distance
    weights[main] = 0.0
    return weights


def blurry_assignment(
    targets: Tensor,
    main_experience: dict[int, int],
    blurry_classes: Sequence[int],
    num_experiences: int,
    blurry_ratio: float,
    spread_decay: float,
    generator: torch.Generator,
) -> Tensor:
    """The experience of every train sample, following the rule of :func:`blurry`."""
    assignment = torch.empty(len(targets), dtype=torch.long)
    blurry = set(blurry_classes)
    for c, k in main_experience.items():
        members = (targets == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = k
        if c not in blurry or num_experiences == 1:
            continue
        spread = int(blurry_ratio * len(members) + 0.5)
        counts = apportion(spread, _spread_weights(k, num_experiences, spread_decay))
        # the first shuffled samples stay; the last `spread` go, in experience order
        start = len(members) - spread
        for j, count in enumerate(counts.tolist()):
            assignment[members[start : start + count]] = j
            start += count
    return assignment


def split_blurry(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int,
    disjoint_ratio: float = 0.0,
    blurry_ratio: float = 0.1,
    spread_decay: float = 1.0,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[Stream, Stream]:
    """The train and test streams of a blurry stream (see :func:`blurry`)."""
    num_experiences = positive_int(num_experiences, "num_experiences")
    disjoint_ratio = ratio(disjoint_ratio, "disjoint_ratio")
    blurry_ratio = ratio(blurry_ratio, "blurry_ratio", high_open=True)
    spread_decay = ratio(spread_decay, "spread_decay", low_open=True)
    targets, test_targets = targets_of(train_dataset), targets_of(test_dataset)
    check_class_ids(targets, "train_dataset")
    check_class_ids(test_targets, "test_dataset")
    classes = torch.unique(targets).tolist()
    order = resolve_class_order(classes, class_order, seed)
    sizes = resolve_experience_sizes(len(classes), num_experiences, None)
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start : start + size])
        start += size
    main = {c: k for k, group in enumerate(groups) for c in group}
    # its own generator: the class order above is the one class_incremental draws with this seed
    generator = torch.Generator().manual_seed(seed + 1)
    num_disjoint = int(disjoint_ratio * len(classes) + 0.5)
    disjoint = {order[i] for i in torch.randperm(len(classes), generator=generator)[:num_disjoint].tolist()}
    blurry_classes = [c for c in order if c not in disjoint]
    assignment = blurry_assignment(
        targets, main, blurry_classes, num_experiences, blurry_ratio, spread_decay, generator
    )
    test_assignment = torch.tensor([main.get(c, -1) for c in test_targets.tolist()], dtype=torch.long)
    unknown = sorted(set(test_targets[test_assignment < 0].tolist()))
    if unknown:
        raise ValueError(f"`test_dataset`: holds class ids {unknown} that no train sample has.")
    train, test = [], []
    for k, group in enumerate(groups):
        index = (assignment == k).nonzero().squeeze(1)
        present = tuple(torch.unique(targets[index]).tolist())
        train.append(Experience(k, select(train_dataset, index, targets[index], None), present))
        test_index = (test_assignment == k).nonzero().squeeze(1)
        test.append(
            Experience(k, select(test_dataset, test_index, test_targets[test_index], None), tuple(sorted(group)))
        )
    return Stream(train, "train"), Stream(test, "test")


def blurry(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    num_experiences: int,
    disjoint_ratio: float = 0.0,
    blurry_ratio: float = 0.1,
    spread_decay: float = 1.0,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A blurry class-incremental stream: each class has a main experience and leaks into the others.

    The "Blurry" setting of Bang et al. (Rainbow Memory, CVPR 2021: Blurry-M) and its
    generalisation i-Blurry-N-M of Koh et al. ("Online Continual Learning on Class Incremental
    Blurry Task Configuration with Anytime Inference", ICLR 2022). The exact rule:

    1. The classes are ordered (``class_order``, or shuffled with ``seed`` exactly as
       :func:`~lightning_cl.benchmarks.class_incremental` does) and cut into ``num_experiences``
       equal groups: group ``k`` is the *main experience* of its classes.
    2. ``round(disjoint_ratio * C)`` classes, drawn with the seed, are *disjoint*: all their
       samples are in their main experience (i-Blurry's N = 100 * disjoint_ratio).
    3. Every other class is *blurry*: its train samples are shuffled (seeded) and
       ``round(blurry_ratio * n_c)`` of them (M = 100 * blurry_ratio) leave the main experience
       ``k``. Experience ``j != k`` receives a number of them proportional to
       ``spread_decay ** |j - k|`` (largest-remainder rounding, ties to the earlier experience).
       ``spread_decay=1`` spreads them uniformly over the other experiences (i-Blurry); a smaller
       value keeps them near ``k``, so a class fades in before its main experience and out after
       it (``0.5``: the neighbours get twice as many as the experiences two steps away).

    With equal class sizes and ``disjoint_ratio=0`` every experience is then ``1 - blurry_ratio``
    its main classes and ``blurry_ratio`` others, the Blurry-M definition. Rounding rule:
    ``round(x)`` is ``floor(x + 0.5)``. Every train sample lands in exactly one experience.

    ``classes_in_this_experience`` of a train experience are the classes present in it (main or
    leaked), so ``classes_seen_so_far`` is what a model has met. The test stream is split by main
    experience, like a class-incremental stream: test experience ``k`` holds the test samples of
    the classes of group ``k``. The stream is task-free (no task labels); for a boundary-free
    online stream, go through it with :func:`~lightning_cl.benchmarks.online.online`.

    Args:
        train_dataset: training samples ``(x, y)``.
        test_dataset: test samples ``(x, y)``.
        num_experiences: number of experiences; must divide the number of classes.
        disjoint_ratio: fraction of the classes that never leak, in [0, 1].
        blurry_ratio: fraction of each blurry class's samples that leak, in [0, 1).
        spread_decay: in (0, 1]: how fast the leaked share falls with the distance to the
            main experience (1: uniform).
        class_order: the order in which classes get their main experience.
        seed: seed of the class order, the disjoint classes and the leaked samples.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Raises:
        ValueError: a ratio out of range, a number of experiences that does not divide the
            classes, a class order that is not a permutation of them, or test classes absent
            from the train set.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.randn(400, 3), torch.arange(400) % 4)
        >>> dm = blurry(ds, ds, num_experiences=2, class_order=[0, 1, 2, 3], blurry_ratio=0.2)
        >>> first = dm.train_stream[0].dataset.targets
        >>> [int((first == c).sum()) for c in range(4)]
        [80, 80, 20, 20]
        >>> dm.train_stream[0].classes_in_this_experience, dm.test_stream[0].classes_in_this_experience
        ((0, 1, 2, 3), (0, 1))
    """
    train, test = split_blurry(
        train_dataset,
        test_dataset,
        num_experiences=num_experiences,
        disjoint_ratio=disjoint_ratio,
        blurry_ratio=blurry_ratio,
        spread_decay=spread_decay,
        class_order=class_order,
        seed=seed,
    )
    return StreamDataModule(
        train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed
    )
