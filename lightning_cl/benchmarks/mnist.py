"""SplitMNIST and PermutedMNIST: MNIST digits as class- and domain-incremental streams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks.domain_incremental import split_by_domain
from lightning_cl.benchmarks.split import FileSplit, check_transform, with_transforms
from lightning_cl.benchmarks.transforms import Normalize, Permute
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

MNISTLike = type[torchvision.datasets.MNIST]
"""A torchvision data set in MNIST's format: ``MNIST``, ``FashionMNIST``, ``KMNIST``."""


def mnist_like_files(dataset: MNISTLike) -> list[str]:
    """The raw files ``dataset`` reads (its archives without ``.gz``), train split first."""
    return [name.removesuffix(".gz") for name, _ in dataset.resources]


def load_mnist_like(dataset: MNISTLike, root: str | Path, train: bool, mean: float, std: float) -> InMemoryDataset:
    """One split of an MNIST-format data set from ``root/<Name>/raw``, normalised per batch.

    The images are held as one uint8 tensor ``[N, 1, 28, 28]`` (47 MB for 60,000 images) and
    turned into floats ``(x / 255 - mean) / std`` a batch at a time.

    Args:
        dataset: the torchvision class, e.g. ``torchvision.datasets.FashionMNIST``.
        root: folder holding ``<Name>/raw``, where ``<Name>`` is the class name.
        train: the train split (else the test split).
        mean: pixel mean of the data set, in [0, 1].
        std: pixel standard deviation of the data set, in [0, 1].

    Raises:
        FileNotFoundError: naming the data set, the folder and the files when the data is not there.
    """
    try:
        data = dataset(str(root), train=train, download=False)
    except RuntimeError as error:
        raw = Path(root) / dataset.__name__ / "raw"
        raise FileNotFoundError(
            f"{dataset.__name__}: no data in {str(raw)!r}; it needs the files {mnist_like_files(dataset)} "
            "(or their .gz archives). Pass download=True to fetch them, or copy them there."
        ) from error
    images = data.data.unsqueeze(1)
    return InMemoryDataset(images, data.targets, transform=Normalize([mean], [std], scale=1 / 255))


def download_mnist_like(dataset: MNISTLike, root: str | Path) -> None:
    """Download the four files of ``dataset`` into ``root/<Name>/raw`` and extract them.

    torchvision checks each archive's md5, skips archives already there with the right md5 and
    does nothing at all when the extracted files are there.

    Raises:
        FileNotFoundError: when a file could not be fetched (offline, say), naming the data set,
            the folder, the files it needs and those missing or failing their md5 check.
    """
    try:
        # the test split is the smaller one to read back; download() fetches all four files anyway
        dataset(str(root), train=False, download=True)
    except RuntimeError as error:
        raw = Path(root) / dataset.__name__ / "raw"
        problems = []
        for name, md5 in dataset.resources:
            if (raw / name.removesuffix(".gz")).is_file():
                continue
            if not (raw / name).is_file():
                problems.append(f"{name} is missing")
            elif not torchvision.datasets.utils.check_md5(raw / name, md5):
                problems.append(f"{name} fails its md5 check (expected {md5})")
        raise FileNotFoundError(
            f"{dataset.__name__}: could not download into {str(raw)!r} ({'; '.join(problems) or error}); "
            f"it needs the files {mnist_like_files(dataset)} or their .gz archives with torchvision's md5. "
            "Copy the archives there and run again."
        ) from error


def load_mnist(root: str | Path, train: bool) -> InMemoryDataset:
    """The MNIST split from ``root/MNIST/raw`` as uint8 tensors, normalised per batch.

    Raises:
        FileNotFoundError: naming the folder and files when the data is not there.
    """
    return load_mnist_like(torchvision.datasets.MNIST, root, train, MNIST_MEAN, MNIST_STD)


def download_mnist(root: str | Path) -> None:
    """Download both MNIST splits into ``root/MNIST/raw`` (md5 checked; nothing if present)."""
    download_mnist_like(torchvision.datasets.MNIST, root)


class SplitMNIST(FileSplit):
    """Class-incremental MNIST: 10 digits in ``num_experiences`` experiences (5 by default).

    The 60,000 train and 10,000 test images are held in memory as uint8 tensors and normalised
    per batch with the usual MNIST mean and std (0.1307, 0.3081). Inputs are ``[1, 28, 28]``.

    Arguments are those of :class:`~lightning_cl.benchmarks.split.FileSplit`.
    """

    def fetch(self, root: Path) -> None:
        download_mnist(root)

    def load(self, root: Path, train: bool) -> Dataset:
        return load_mnist(root, train)


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
        train_transform: applied to the train stream's inputs after the normalisation, on whole
            batches ``[B, C, H, W]`` of floats (wrap a per-image transform in ``PerSample``).
        eval_transform: the same for the test stream (None: normalisation only).
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
        train_transform: Callable[[Any], Any] | None = None,
        eval_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        self.train_transform = check_transform(train_transform, "train_transform")
        self.eval_transform = check_transform(eval_transform, "eval_transform")
        # transforms are code, not hyperparameters: kept out so checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
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
        streams = split_by_domain(
            load_mnist(self.root, train=True),
            load_mnist(self.root, train=False),
            [Permute(p) for p in self.permutations()],
            task_labels=self.task_labels,
        )
        return with_transforms(*streams, self.train_transform, self.eval_transform)
