"""SplitFMNIST: Fashion-MNIST's ten clothing classes as a class-incremental stream."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset

from lightning_cl.benchmarks.mnist import download_mnist_like, load_mnist_like
from lightning_cl.benchmarks.split import FileSplit
from lightning_cl.core.data import InMemoryDataset

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def load_fmnist(root: str | Path, train: bool) -> InMemoryDataset:
    """The Fashion-MNIST split from ``root/FashionMNIST/raw`` as uint8 tensors, normalised per batch.

    Raises:
        FileNotFoundError: naming the folder and files when the data is not there.
    """
    return load_mnist_like(torchvision.datasets.FashionMNIST, root, train, FMNIST_MEAN, FMNIST_STD)


def download_fmnist(root: str | Path) -> None:
    """Download both Fashion-MNIST splits into ``root/FashionMNIST/raw`` (md5 checked; nothing if present)."""
    download_mnist_like(torchvision.datasets.FashionMNIST, root)


class SplitFMNIST(FileSplit):
    """Class-incremental Fashion-MNIST: 10 clothing classes in ``num_experiences`` experiences (5 by default).

    Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms", arXiv:1708.07747, 2017. As in Avalanche's ``SplitFMNIST``, the class
    order is shuffled with ``seed`` unless ``class_order`` is given.

    The 60,000 train and 10,000 test images (6,000 and 1,000 per class) are held in memory as
    uint8 tensors and normalised per batch with Fashion-MNIST's mean and std (0.2860, 0.3530).
    Inputs are ``[1, 28, 28]``. The files are torchvision's, in ``root/FashionMNIST/raw``.

    Arguments are those of :class:`~lightning_cl.benchmarks.split.FileSplit`.

    Raises:
        FileNotFoundError: from ``prepare_data`` when the files cannot be fetched, or when the
            streams are built without the files; the message names the folder and the files.

    Example:
        >>> dm = SplitFMNIST(root="data", num_experiences=2, download=False)
        >>> dm.num_experiences, dm.num_classes
        (2, 10)
    """

    def fetch(self, root: Path) -> None:
        download_fmnist(root)

    def load(self, root: Path, train: bool) -> Dataset:
        return load_fmnist(root, train)
