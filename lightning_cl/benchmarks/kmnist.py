"""SplitKMNIST: Kuzushiji-MNIST's ten cursive hiragana classes as a class-incremental stream."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset

from lightning_cl.benchmarks.mnist import download_mnist_like, load_mnist_like
from lightning_cl.benchmarks.split import FileSplit
from lightning_cl.core.data import InMemoryDataset

KMNIST_MEAN, KMNIST_STD = 0.1918, 0.3483


def load_kmnist(root: str | Path, train: bool) -> InMemoryDataset:
    """The Kuzushiji-MNIST split from ``root/KMNIST/raw`` as uint8 tensors, normalised per batch.

    Raises:
        FileNotFoundError: naming the folder and files when the data is not there.
    """
    return load_mnist_like(torchvision.datasets.KMNIST, root, train, KMNIST_MEAN, KMNIST_STD)


def download_kmnist(root: str | Path) -> None:
    """Download both Kuzushiji-MNIST splits into ``root/KMNIST/raw`` (md5 checked; nothing if present)."""
    download_mnist_like(torchvision.datasets.KMNIST, root)


class SplitKMNIST(FileSplit):
    """Class-incremental Kuzushiji-MNIST: 10 hiragana in ``num_experiences`` experiences (5 by default).

    Clanuwat, Bober-Irizar, Kitamoto, Lamb, Yamamoto and Ha, "Deep Learning for Classical
    Japanese Literature", NeurIPS 2018 Workshop on Machine Learning for Creativity and Design.

    The 60,000 train and 10,000 test images (6,000 and 1,000 per class) are held in memory as
    uint8 tensors and normalised per batch with the train split's mean and std (0.1918, 0.3483).
    Inputs are ``[1, 28, 28]``. The files are torchvision's, in ``root/KMNIST/raw``; torchvision
    wants all four of them before it reads either split.

    Arguments are those of :class:`~lightning_cl.benchmarks.split.FileSplit`.

    Raises:
        FileNotFoundError: from ``prepare_data`` when the files cannot be fetched, or when the
            streams are built without the files; the message names the folder and the files.

    Example:
        >>> dm = SplitKMNIST(root="data", num_experiences=10, download=False)
        >>> dm.num_experiences, dm.num_classes
        (10, 10)
    """

    def fetch(self, root: Path) -> None:
        download_kmnist(root)

    def load(self, root: Path, train: bool) -> Dataset:
        return load_kmnist(root, train)
