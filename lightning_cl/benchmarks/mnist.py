"""SplitMNIST and PermutedMNIST: MNIST digits as class- and domain-incremental streams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks.domain_incremental import split_by_domain
from lightning_cl.benchmarks.split import ClassSplit
from lightning_cl.benchmarks.transforms import Normalize, Permute
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_mnist(root: str | Path, train: bool) -> InMemoryDataset:
    """The MNIST split from ``root/MNIST/raw`` as uint8 tensors, normalised per batch.

    Raises:
        FileNotFoundError: naming the folder and files when the data is not there.
    """
    try:
        data = torchvision.datasets.MNIST(str(root), train=train, download=False)
    except RuntimeError as error:
        names = [name.removesuffix(".gz") for name, _ in torchvision.datasets.MNIST.resources]
        raise FileNotFoundError(
            f"MNIST: no data in {str(Path(root) / 'MNIST' / 'raw')!r}; it needs the files {names} "
            "(or their .gz archives). Pass download=True to fetch them, or copy them there."
        ) from error
    images = data.data.unsqueeze(1)  # [N, 1, 28, 28] uint8: 47 MB for the train split
    return InMemoryDataset(images, data.targets, transform=Normalize([MNIST_MEAN], [MNIST_STD], scale=1 / 255))


def download_mnist(root: str | Path) -> None:
    """Download both MNIST splits into ``root/MNIST/raw`` (md5 checked; nothing if present)."""
    for train in (True, False):
        torchvision.datasets.MNIST(str(root), train=train, download=True)


class SplitMNIST(ClassSplit):
    """Class-incremental MNIST: 10 digits in ``num_experiences`` experiences (5 by default).

    The 60,000 train and 10,000 test images are held in memory as uint8 tensors and normalised
    per batch with the usual MNIST mean and std (0.1307, 0.3081). Inputs are ``[1, 28, 28]``.

    Args:
        root: folder holding (or receiving) ``MNIST/raw``.
        num_experiences: number of experiences (a divisor of 10, or see ``classes_per_experience``).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of 0..9.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        download: download the files in ``prepare_data`` (rank 0 only), checking their md5.
    """

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int = 5,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(num_experiences, seed, class_order, task_labels, batch_size, eval_batch_size, num_workers)
        self.save_hyperparameters()
        self.root = Path(root)
        self.download = download

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        if self.download:
            download_mnist(self.root)

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        return load_mnist(self.root, train=True), load_mnist(self.root, train=False)


class PermutedMNIST(StreamDataModule):
    """Domain-incremental MNIST: every experience is all of MNIST under its own pixel permutation.

    The permutations are drawn with ``seed`` (every experience is permuted, as in Avalanche and
    the GEM/EWC papers) and applied to whole batches after normalisation. All experiences hold the
    10 digit classes.

    Args:
        root: folder holding (or receiving) ``MNIST/raw``.
        num_experiences: number of permutations (10 is the usual choice in the literature).
        seed: seed of the permutations.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        download: download the files in ``prepare_data`` (rank 0 only), checking their md5.
    """

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int = 10,
        seed: int = 0,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        self.save_hyperparameters()
        self.root = Path(root)
        self.task_labels = task_labels
        self.download = download
        self._num_experiences = num_experiences

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def num_experiences(self) -> int:
        return self._num_experiences

    def prepare_data(self) -> None:
        if self.download:
            download_mnist(self.root)

    def permutations(self) -> list[Tensor]:
        """The pixel permutation of each experience (a pure function of ``seed``)."""
        generator = torch.Generator().manual_seed(self.seed)
        return [torch.randperm(28 * 28, generator=generator) for _ in range(self._num_experiences)]

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        return split_by_domain(
            load_mnist(self.root, train=True),
            load_mnist(self.root, train=False),
            [Permute(p) for p in self.permutations()],
            task_labels=self.task_labels,
        )
