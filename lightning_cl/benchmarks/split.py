"""ClassSplit: the base of the classic benchmarks that split one data set by class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from lightning_cl.benchmarks.class_incremental import resolve_class_order, resolve_experience_sizes, split_by_class
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience


class ClassSplit(StreamDataModule):
    """A data set split by class into experiences; subclasses say how to load it.

    Subclasses implement :meth:`load_datasets` (called once, lazily, after ``prepare_data``) and
    may override ``num_classes`` when it is known without reading the data.

    Args:
        num_experiences: number of experiences (must divide the number of classes).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order in which the classes arrive (a permutation of the class ids).
        task_labels: add the experience index as a task label: batches become ``(x, y, t)``.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        train_transform: applied to the train stream's inputs after the standard normalisation
            (None: normalisation only). On the in-memory fast path it receives whole batches
            ``[B, C, H, W]`` of floats; wrap a per-image transform in
            :class:`~lightning_cl.benchmarks.transforms.PerSample`.
        eval_transform: the same for the test stream's inputs.

    The transforms are composed (``with_transform``) after each experience dataset's own
    normalisation when the streams are built; ``dataset[i]`` equals row ``i`` of a batch.
    Subclasses keep them out of ``save_hyperparameters`` (they are code, and checkpoints must
    load with ``weights_only=True``). Both are keyword arguments appended at the end, so
    existing positional calls are unchanged.
    """

    #: True: ``train_transform`` / ``eval_transform`` run after the normalisation of the in-memory
    #: data; per-sample datamodules (image folders) set False: their transforms replace the
    #: default one in ``load_datasets``.
    compose_transforms: ClassVar[bool] = True

    def __init__(
        self,
        num_experiences: int,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_transform: Callable[[Any], Any] | None = None,
        eval_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.train_transform = check_transform(train_transform, "train_transform")
        self.eval_transform = check_transform(eval_transform, "eval_transform")
        self.class_order = None if class_order is None else list(class_order)
        self.task_labels = task_labels
        self._num_experiences = num_experiences

    @property
    def num_experiences(self) -> int:
        # known without reading the data, so the CLI can link it before prepare_data
        return self._num_experiences

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """The whole train and test sets, ``(x, y)`` items with integer targets."""
        raise TypeError(f"{type(self).__name__} must implement `load_datasets`.")

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train, test = self.load_datasets()
        streams = split_by_class(
            train,
            test,
            num_experiences=self._num_experiences,
            class_order=self.class_order,
            seed=self.seed,
            task_labels=self.task_labels,
        )
        if not self.compose_transforms:
            return streams  # the subclass's load_datasets applied its transforms already
        return with_transforms(*streams, self.train_transform, self.eval_transform)


def check_split_arguments(num_classes: int, num_experiences: int, class_order: Sequence[int] | None) -> None:
    """Raise the errors of :func:`split_by_class` now, before any data is read."""
    resolve_experience_sizes(num_classes, num_experiences, None)
    if class_order is not None:
        if isinstance(class_order, (str, bytes)) or not isinstance(class_order, Sequence):
            raise TypeError(f"`class_order`: expected a sequence of class ids, got {type(class_order).__name__}.")
        resolve_class_order(list(range(num_classes)), class_order, seed=0)


def check_transform(transform: Any, name: str) -> Callable[[Any], Any] | None:
    """``transform`` if it is callable or None, else a TypeError naming ``name``."""
    if transform is not None and not callable(transform):
        raise TypeError(f"`{name}`: expected a callable (or None), got {type(transform).__name__}.")
    return transform


def with_transforms(
    train_stream: Sequence[Experience],
    test_stream: Sequence[Experience],
    train_transform: Callable[[Any], Any] | None,
    eval_transform: Callable[[Any], Any] | None,
) -> tuple[list[Experience], list[Experience]]:
    """The two streams with ``train_transform`` / ``eval_transform`` as their ``"train"`` / ``"eval"`` transform groups.

    On datasets with transform groups (this package's), every dataset of both streams gets both
    transforms, after its own (the normalisation): ``train_transform`` in its ``"train"`` group,
    ``eval_transform`` in its ``"eval"`` group; train experiences stay in ``"train"`` and test
    experiences are put in ``"eval"``. So ``train_stream[k].dataset.with_group("eval")`` is the
    train data as the model sees it at evaluation (what a validation split or a method computing
    statistics on the train data wants), and the stream loaders pick the group themselves. A
    dataset without groups but with ``with_transform`` gets its stream's transform composed after
    its own. An in-memory dataset calls the transforms on whole batches.

    Raises:
        TypeError: when a transform is given and a dataset cannot take one.
    """
    if train_transform is None and eval_transform is None:
        return list(train_stream), list(test_stream)

    def apply(stream: Sequence[Experience], group: str, name: str) -> list[Experience]:
        out = []
        for experience in stream:
            data: Any = experience.dataset
            if hasattr(data, "with_group"):
                data = data.with_transform(train_transform, group="train").with_transform(eval_transform, group="eval")
                data = data.with_group(group)
            else:
                transform = train_transform if group == "train" else eval_transform
                compose = getattr(data, "with_transform", None)
                if compose is None and transform is not None:
                    raise TypeError(
                        f"`{name}`: the dataset of experience {experience.index} "
                        f"({type(data).__name__}) has no `with_transform`."
                    )
                if transform is not None:
                    data = compose(transform)  # type: ignore[misc]
            out.append(dataclasses.replace(experience, dataset=data))
        return out

    return apply(train_stream, "train", "train_transform"), apply(test_stream, "eval", "eval_transform")


class FileSplit(ClassSplit):
    """A class split of a data set read into memory from torchvision's files under ``root``.

    Subclasses set :attr:`CLASSES` (and :attr:`DEFAULT_EXPERIENCES`, the literature's number of
    experiences) and implement :meth:`fetch` (download with md5 checks) and :meth:`load` (one split
    as an in-memory dataset, normalised per batch).

    Args:
        root: folder holding (or receiving) the files.
        num_experiences: number of experiences (a divisor of the number of classes); None takes
            :attr:`DEFAULT_EXPERIENCES`.
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of their ids.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        download: download the files in ``prepare_data`` (rank 0 only), checking their md5.
        train_transform: applied to the train stream's inputs after the normalisation, on whole
            batches ``[B, C, H, W]`` of floats (wrap a per-image transform in ``PerSample``).
        eval_transform: the same for the test stream (None: normalisation only).
    """

    CLASSES: ClassVar[int] = 10
    DEFAULT_EXPERIENCES: ClassVar[int] = 5

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int | None = None,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        train_transform: Callable[[Any], Any] | None = None,
        eval_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if num_experiences is None:
            num_experiences = self.DEFAULT_EXPERIENCES
        check_split_arguments(self.CLASSES, num_experiences, class_order)
        super().__init__(
            num_experiences,
            seed,
            class_order,
            task_labels,
            batch_size,
            eval_batch_size,
            num_workers,
            train_transform=train_transform,
            eval_transform=eval_transform,
        )
        # transforms are code, not hyperparameters: kept out so checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        self.download = download

    @property
    def num_classes(self) -> int:
        return self.CLASSES

    def fetch(self, root: Path) -> None:
        """Download the files into ``root`` (nothing when they are there)."""
        raise TypeError(f"{type(self).__name__} must implement `fetch`.")

    def load(self, root: Path, train: bool) -> Dataset:
        """One split, in memory."""
        raise TypeError(f"{type(self).__name__} must implement `load`.")

    def prepare_data(self) -> None:
        if self.download:
            self.fetch(self.root)

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        return self.load(self.root, True), self.load(self.root, False)
