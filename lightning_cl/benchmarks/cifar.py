"""SplitCIFAR10, SplitCIFAR100 and SplitCIFAR110: CIFAR images as class-incremental streams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.data import Dataset

from lightning_cl.benchmarks.class_incremental import select, split_by_class
from lightning_cl.benchmarks.split import ClassSplit, FileSplit, check_split_arguments, with_transforms
from lightning_cl.benchmarks.transforms import Normalize
from lightning_cl.core.data import InMemoryDataset, targets_of
from lightning_cl.core.experience import Experience

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

CIFARLike = type[torchvision.datasets.CIFAR10]
"""A torchvision data set in CIFAR's pickle format: ``CIFAR10`` or ``CIFAR100``."""


def cifar_files(dataset: CIFARLike) -> list[str]:
    """The files ``dataset`` reads from its folder: the train batches, the test batch, the meta file."""
    return [name for name, _ in dataset.train_list + dataset.test_list] + [dataset.meta["filename"]]


def _folder(dataset: CIFARLike, root: str | Path) -> Path:
    return Path(root) / dataset.base_folder


def load_cifar(
    dataset: CIFARLike, root: str | Path, train: bool, mean: Sequence[float], std: Sequence[float]
) -> InMemoryDataset:
    """One split of a CIFAR data set from ``root/<base folder>``, normalised per batch.

    The images are held as one uint8 tensor ``[N, 3, 32, 32]`` (150 MB for 50,000 images);
    torchvision reads them as ``[N, 32, 32, 3]``, so they are permuted (and made contiguous) once.

    Args:
        dataset: the torchvision class, ``torchvision.datasets.CIFAR10`` or ``CIFAR100``.
        root: folder holding ``cifar-10-batches-py`` (CIFAR-10) or ``cifar-100-python`` (CIFAR-100).
        train: the train split (else the test split).
        mean: per-channel pixel mean of the data set, in [0, 1].
        std: per-channel pixel standard deviation of the data set, in [0, 1].

    Raises:
        FileNotFoundError: naming the data set, the folder and the files when the data is not
            there (or fails torchvision's md5 check).
    """
    try:
        data = dataset(str(root), train=train, download=False)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{dataset.__name__}: no data (or data failing its md5 check) in {str(_folder(dataset, root))!r}; "
            f"it needs the files {cifar_files(dataset)}. Pass download=True to fetch them, or copy them there."
        ) from error
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor(data.targets, dtype=torch.long)
    return InMemoryDataset(images, targets, transform=Normalize(mean, std, scale=1 / 255))


def download_cifar(dataset: CIFARLike, root: str | Path) -> None:
    """Download and extract ``dataset`` into ``root`` (md5 checked; nothing if the files are there).

    Raises:
        FileNotFoundError: when the archive could not be fetched (offline, say), naming the data
            set, the folder and the files it needs.
    """
    try:
        dataset(str(root), train=False, download=True)
    except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
        folder = _folder(dataset, root)
        missing = [name for name in cifar_files(dataset) if not (folder / name).is_file()]
        raise FileNotFoundError(
            f"{dataset.__name__}: could not download {dataset.url} into {str(Path(root))!r} ({error}); "
            f"{str(folder)!r} needs the files {cifar_files(dataset)} with torchvision's md5 "
            f"(missing: {missing}). Copy them (or the archive {dataset.filename}) there and run again."
        ) from error


def load_cifar10(root: str | Path, train: bool) -> InMemoryDataset:
    """The CIFAR-10 split from ``root/cifar-10-batches-py`` as uint8 tensors, normalised per batch."""
    return load_cifar(torchvision.datasets.CIFAR10, root, train, CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(root: str | Path, train: bool) -> InMemoryDataset:
    """The CIFAR-100 split (fine labels) from ``root/cifar-100-python``, normalised per batch."""
    return load_cifar(torchvision.datasets.CIFAR100, root, train, CIFAR100_MEAN, CIFAR100_STD)


class SplitCIFAR10(FileSplit):
    """Class-incremental CIFAR-10: 10 classes in ``num_experiences`` experiences (5 by default).

    The 50,000 train and 10,000 test images are held in memory as one uint8 tensor
    ``[N, 3, 32, 32]`` per split and normalised per batch with the usual CIFAR-10 mean
    (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616). No augmentation is applied unless
    asked for: ``train_transform=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])``
    is the usual one (batched, see :mod:`lightning_cl.benchmarks.transforms`).

    Arguments are those of :class:`~lightning_cl.benchmarks.split.FileSplit`.

    Example:
        >>> dm = SplitCIFAR10(root="nowhere", download=False)  # nothing is read before the streams are used
        >>> dm.num_classes, dm.num_experiences
        (10, 5)
    """

    def fetch(self, root: Path) -> None:
        download_cifar(torchvision.datasets.CIFAR10, root)

    def load(self, root: Path, train: bool) -> Dataset:
        return load_cifar10(root, train)


class SplitCIFAR100(FileSplit):
    """Class-incremental CIFAR-100: 100 fine classes in ``num_experiences`` experiences (10 by default).

    The 50,000 train and 10,000 test images are held in memory as one uint8 tensor
    ``[N, 3, 32, 32]`` per split and normalised per batch with the usual CIFAR-100 mean
    (0.5071, 0.4865, 0.4409) and std (0.2673, 0.2564, 0.2762). The targets are the 100 fine
    labels. No augmentation is applied unless asked for (``train_transform``, as for SplitCIFAR10).

    Arguments are those of :class:`~lightning_cl.benchmarks.split.FileSplit`.

    Example:
        >>> dm = SplitCIFAR100(root="nowhere", download=False)  # nothing is read before the streams are used
        >>> dm.num_classes, dm.num_experiences
        (100, 10)
    """

    CLASSES = 100
    DEFAULT_EXPERIENCES = 10

    def fetch(self, root: Path) -> None:
        download_cifar(torchvision.datasets.CIFAR100, root)

    def load(self, root: Path, train: bool) -> Dataset:
        return load_cifar100(root, train)


class SplitCIFAR110(ClassSplit):
    """All of CIFAR-10 as the first experience, then CIFAR-100 split by class (Avalanche's SplitCIFAR110).

    Experience 0 holds the whole of CIFAR-10 (classes 0..9); experiences 1..``num_experiences - 1``
    split the 100 CIFAR-100 classes evenly, their ids shifted by 10 (CIFAR-100 class ``c`` is
    class ``c + 10``), so the model sees 110 classes. ``class_order`` and ``seed`` order only the
    CIFAR-100 classes, and ``class_order`` names them by their CIFAR-100 ids 0..99 (as Avalanche's
    ``fixed_class_order`` does). With ``task_labels`` experience ``k`` has task label ``k``
    (CIFAR-10 is task 0).

    Each data set keeps its own normalisation (CIFAR-10's mean/std for experience 0, CIFAR-100's
    for the rest); the images are held as uint8 ``[N, 3, 32, 32]`` tensors. Built from
    :func:`~lightning_cl.benchmarks.class_incremental.split_by_class` on the shifted CIFAR-100,
    with the CIFAR-10 experience put in front.

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py`` and ``cifar-100-python``.
        num_experiences: 1 + the number of CIFAR-100 experiences (``num_experiences - 1`` must
            divide 100); 11 by default.
        seed: seed of the CIFAR-100 class order (when ``class_order`` is None).
        class_order: order of the CIFAR-100 classes, a permutation of 0..99.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        train_transform: applied to the train stream's inputs after the normalisation, on whole
            batches ``[B, C, H, W]`` of floats (wrap a per-image transform in ``PerSample``).
        eval_transform: the same for the test stream (None: normalisation only).
        download: download both archives in ``prepare_data`` (rank 0 only), checking their md5.

    Example:
        >>> dm = SplitCIFAR110(root="nowhere", download=False)  # nothing is read before the streams are used
        >>> dm.num_classes, dm.num_experiences
        (110, 11)
    """

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int = 11,
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
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 2:
            raise ValueError(
                "`num_experiences`: expected an integer >= 2 (CIFAR-10, then at least one CIFAR-100 "
                f"experience), got {num_experiences!r}."
            )
        try:
            check_split_arguments(100, num_experiences - 1, class_order)
        except ValueError as error:
            if "`class_order`" in str(error):
                raise
            raise ValueError(
                f"`num_experiences`: expected 1 + a divisor of the 100 CIFAR-100 classes, got {num_experiences}."
            ) from error
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
        return 110

    def prepare_data(self) -> None:
        if self.download:
            download_cifar(torchvision.datasets.CIFAR10, self.root)
            download_cifar(torchvision.datasets.CIFAR100, self.root)

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        cifar10 = {"train": load_cifar10(self.root, train=True), "test": load_cifar10(self.root, train=False)}
        cifar100 = [load_cifar100(self.root, train=True), load_cifar100(self.root, train=False)]
        shifted = [d.relabel(d.targets + 10, None) for d in cifar100]
        order = None if self.class_order is None else [c + 10 for c in self.class_order]
        # randperm over the sorted ids 10..109: the same order SplitCIFAR100 draws with this seed, shifted
        rest = split_by_class(
            shifted[0], shifted[1], num_experiences=self.num_experiences - 1, class_order=order, seed=self.seed
        )
        streams: dict[str, list[Experience]] = {}
        for name, stream in zip(("train", "test"), rest):
            first = cifar10[name]
            experiences = [first, *(e.dataset for e in stream)]
            classes = [tuple(range(10)), *(e.classes_in_this_experience for e in stream)]
            streams[name] = []
            for k, (data, seen) in enumerate(zip(experiences, classes)):
                if self.task_labels:
                    targets = targets_of(data)
                    data = select(data, torch.arange(len(targets)), targets, torch.full_like(targets, k))
                streams[name].append(Experience(k, data, seen, k if self.task_labels else 0))
        return with_transforms(streams["train"], streams["test"], self.train_transform, self.eval_transform)
