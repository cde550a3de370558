"""SplitDigits: the embedded 8x8 digits as a class-incremental stream (offline, seconds to train)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks.split import ClassSplit
from lightning_cl.benchmarks.transforms import Normalize
from lightning_cl.core.data import InMemoryDataset

DIGITS_SAMPLES = 1797
DIGITS_TEST_FRACTION = 0.25


def load_digits() -> tuple[Tensor, Tensor]:
    """The 1,797 embedded digits: images ``[N, 1, 8, 8]`` (uint8, values 0..16) and labels ``[N]``."""
    with (
        resources.files("lightning_cl.benchmarks").joinpath("data/digits.csv.gz").open("rb") as raw,
        gzip.open(raw) as text,
    ):
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images = torch.from_numpy(table[:, :64]).to(torch.uint8).view(-1, 1, 8, 8)
    return images, torch.from_numpy(table[:, 64])


def stratified_split(targets: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Train and test indices with ``test_fraction`` of every class in the test part."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(targets).tolist():
        index = (targets == c).nonzero().squeeze(1)
        index = index[torch.randperm(len(index), generator=generator)]
        n_test = round(len(index) * test_fraction)
        test.append(index[:n_test])
        train.append(index[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class SplitDigits(ClassSplit):
    """Class-incremental 8x8 digits, embedded in the package: the quickstart stream.

    1,797 images of 10 digit classes (UCI optical digits, as bundled with scikit-learn), split
    once into 1,347 train and 450 test images (25% of each class, fixed split), then into
    ``num_experiences`` experiences of ``10 / num_experiences`` classes. Inputs are ``[1, 8, 8]``
    floats in [0, 1]. Nothing is downloaded.

    Args:
        num_experiences: number of experiences (a divisor of 10).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of 0..9.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Example:
        >>> dm = SplitDigits(num_experiences=5, class_order=list(range(10)))
        >>> dm.num_experiences, dm.num_classes, [len(e) for e in dm.test_stream]
        (5, 10, [90, 90, 91, 90, 89])
    """

    def __init__(
        self,
        num_experiences: int = 5,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_experiences, seed, class_order, task_labels, batch_size, eval_batch_size, num_workers)
        self.save_hyperparameters()
        self.train_stream  # noqa: B018 - the data is embedded: build now so bad arguments fail here

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        images, targets = load_digits()
        train_index, test_index = stratified_split(targets, DIGITS_TEST_FRACTION, seed=0)
        data = InMemoryDataset(images, targets, transform=Normalize([0.0], [1.0], scale=1 / 16))
        return data.subset(train_index), data.subset(test_index)
