"""ClassSplit: the base of the classic benchmarks that split one data set by class."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from lightning_cl.benchmarks.class_incremental import split_by_class
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
    """

    def __init__(
        self,
        num_experiences: int,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
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
        return split_by_class(
            train,
            test,
            num_experiences=self._num_experiences,
            class_order=self.class_order,
            seed=self.seed,
            task_labels=self.task_labels,
        )
