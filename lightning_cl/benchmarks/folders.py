"""SplitTinyImageNet, SplitCUB200 and SplitImageNet: class-incremental streams over image folders.

Each reads its data set's official folder layout once (file names and class ids only, no image
is opened) and serves the images one file per sample through
:class:`~lightning_cl.benchmarks.image_folder.ImageFiles`, so its ``targets`` are known at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_and_extract_archive

from lightning_cl.benchmarks.image_folder import ImageFiles, scan_image_folder
from lightning_cl.benchmarks.split import ClassSplit, check_split_arguments

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
CUB200_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB200_MD5 = "97eceeb196236b17998738112f37df78"

Transform = Callable[[Any], Any]


def imagenet_transforms(size: int, resize: int, augment: bool) -> Transform:
    """The usual ImageNet pipeline: train ``RandomResizedCrop(size)`` + flip, eval ``Resize(resize)`` +
    ``CenterCrop(size)``; then ``ToTensor`` and the ImageNet mean/std normalisation."""
    crop: list[Any] = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if augment else [T.Resize(resize), T.CenterCrop(size)]
    )
    return T.Compose([*crop, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def tiny_imagenet_transforms(augment: bool) -> Transform:
    """TinyImageNet's images as ``[3, 64, 64]`` (resized if not 64x64), flipped when training, normalised."""
    flip: list[Any] = [T.RandomHorizontalFlip()] if augment else []
    return T.Compose([T.Resize((64, 64)), *flip, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _check_transform(value: Any, name: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"`{name}`: expected a callable transform or None, got {type(value).__name__}.")


def _missing(what: str, path: Path, layout: str, hint: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what}: no {str(path)!r}; expected the layout {layout}. {hint}")


def _download(what: str, url: str, md5: str, root: Path, folder: Path) -> None:
    """Download and extract ``url`` into ``root`` (md5 checked) unless ``folder`` is there."""
    if folder.is_dir():
        return
    try:
        download_and_extract_archive(url, download_root=str(root), md5=md5)
    except (OSError, RuntimeError) as error:
        raise FileNotFoundError(
            f"{what}: could not download {url} into {str(root)!r} ({error}); copy the archive "
            f"(md5 {md5}) there, or its extracted folder {folder.name!r}, and run again."
        ) from error


class _FolderSplit(ClassSplit):
    """What the three benchmarks share: arguments, transforms and the download hook."""

    def __init__(
        self,
        root: str | Path,
        num_experiences: int,
        seed: int,
        class_order: Sequence[int] | None,
        task_labels: bool,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        train_transform: Transform | None,
        eval_transform: Transform | None,
    ) -> None:
        _check_transform(train_transform, "train_transform")
        _check_transform(eval_transform, "eval_transform")
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root`: expected a path, got {type(root).__name__}.")
        super().__init__(num_experiences, seed, class_order, task_labels, batch_size, eval_batch_size, num_workers)
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    compose_transforms = False  # the given transforms replace the default in `datasets`

    def default_transform(self, train: bool) -> Transform:
        """The transform of the train (``train=True``) or test images when none is given."""
        raise TypeError(f"{type(self).__name__} must implement `default_transform`.")

    def datasets(
        self, train_files: list[tuple[str, int]], test_files: list[tuple[str, int]]
    ) -> tuple[Dataset, Dataset]:
        train_t = self.train_transform or self.default_transform(True)
        eval_t = self.eval_transform or self.default_transform(False)
        return ImageFiles(train_files, train_t), ImageFiles(test_files, eval_t)


class _DownloadedFolderSplit(_FolderSplit):
    """A folder split with a fixed number of classes, downloaded in ``prepare_data`` when asked."""

    CLASSES: ClassVar[int] = 200

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int = 10,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
    ) -> None:
        check_split_arguments(self.CLASSES, num_experiences, class_order)
        super().__init__(
            root,
            num_experiences,
            seed,
            class_order,
            task_labels,
            batch_size,
            eval_batch_size,
            num_workers,
            train_transform,
            eval_transform,
        )
        self.download = download

    @property
    def num_classes(self) -> int:
        return self.CLASSES


class SplitTinyImageNet(_DownloadedFolderSplit):
    """Class-incremental TinyImageNet: 200 classes of 64x64 images in ``num_experiences`` experiences.

    Reads the official layout under ``root/tiny-imagenet-200``: ``wnids.txt`` (the 200 class
    WordNet ids; class ``i`` is its ``i``-th line, Avalanche's order), ``train/<wnid>/images/*.JPEG``
    (500 per class) and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (50 per
    class), the val set serving as the test set (the official test set has no labels). Images are
    read per sample; the default transform resizes to 64x64, flips training images at random,
    then ``ToTensor`` and the ImageNet mean/std normalisation.

    Args:
        root: folder holding (or receiving) ``tiny-imagenet-200``.
        num_experiences: number of experiences (a divisor of 200).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of 0..199.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        download: download ``tiny-imagenet-200.zip`` (md5 checked) in ``prepare_data`` unless
            the folder is there.
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.

    Raises:
        ValueError: the class-split errors (at construction); at loading, a layout whose
            ``wnids.txt`` does not list 200 classes or whose annotations name unknown classes.
        FileNotFoundError: at loading, a missing file or folder, naming it and the layout.

    Example:
        >>> dm = SplitTinyImageNet("data", num_experiences=20, download=False)  # nothing is read yet
        >>> dm.num_classes, dm.num_experiences
        (200, 20)
    """

    LAYOUT = "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}"

    @property
    def folder(self) -> Path:
        return self.root / "tiny-imagenet-200"

    def default_transform(self, train: bool) -> Transform:
        return tiny_imagenet_transforms(train)

    def prepare_data(self) -> None:
        if self.download:
            _download("SplitTinyImageNet", TINY_IMAGENET_URL, TINY_IMAGENET_MD5, self.root, self.folder)

    def _path(self, *parts: str) -> Path:
        path = self.folder.joinpath(*parts)
        if not path.exists():
            raise _missing("SplitTinyImageNet", path, self.LAYOUT, "Pass download=True to fetch it.")
        return path

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        wnids = self._path("wnids.txt").read_text().split()
        if len(wnids) != 200 or len(set(wnids)) != 200:
            raise ValueError(
                f"SplitTinyImageNet: {str(self.folder / 'wnids.txt')!r} lists {len(set(wnids))} classes, expected 200."
            )
        class_id = {wnid: i for i, wnid in enumerate(wnids)}
        train: list[tuple[str, int]] = []
        for wnid in wnids:
            images = self._path("train", wnid, "images")
            train += [(str(images / name), class_id[wnid]) for name in sorted(os.listdir(images))]
        val_images = self._path("val", "images")
        test: list[tuple[str, int]] = []
        for number, line in enumerate(self._path("val", "val_annotations.txt").read_text().splitlines(), start=1):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in class_id:
                raise ValueError(
                    f"SplitTinyImageNet: line {number} of val_annotations.txt is not '<file>\\t<wnid>...' "
                    f"with a wnid of wnids.txt: {line!r}."
                )
            test.append((str(val_images / fields[0]), class_id[fields[1]]))
        return self.datasets(train, test)


class SplitCUB200(_DownloadedFolderSplit):
    """Class-incremental CUB-200-2011: 200 bird species in ``num_experiences`` experiences.

    Reads the official layout under ``root/CUB_200_2011``: ``images.txt`` (``<id> <path>``, paths
    relative to ``images/``), ``image_class_labels.txt`` (``<id> <class>``, classes 1..200, class
    id here = class - 1) and ``train_test_split.txt`` (``<id> <1 for train, 0 for test>``; 5,994
    train and 5,794 test images). Images are read per sample; the default transform is the
    ImageNet one (train ``RandomResizedCrop(224)`` + flip, test ``Resize(256)`` +
    ``CenterCrop(224)``), then ``ToTensor`` and the ImageNet mean/std normalisation.

    Args:
        root: folder holding (or receiving) ``CUB_200_2011``.
        num_experiences: number of experiences (a divisor of 200).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of 0..199.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        download: download ``CUB_200_2011.tgz`` from CaltechDATA (md5 checked) in
            ``prepare_data`` unless the folder is there.
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.

    Raises:
        ValueError: the class-split errors (at construction); at loading, malformed or
            inconsistent lists, or classes outside 1..200.
        FileNotFoundError: at loading, a missing file or folder, naming it and the layout.

    Example:
        >>> SplitCUB200("data", num_experiences=7, download=False)
        Traceback (most recent call last):
        ...
        ValueError: `num_experiences`: ...
    """

    LAYOUT = "CUB_200_2011/{images/<class>/<image>.jpg, images.txt, image_class_labels.txt, train_test_split.txt}"

    @property
    def folder(self) -> Path:
        return self.root / "CUB_200_2011"

    def default_transform(self, train: bool) -> Transform:
        return imagenet_transforms(224, 256, train)

    def prepare_data(self) -> None:
        if self.download:
            _download("SplitCUB200", CUB200_URL, CUB200_MD5, self.root, self.folder)

    def _table(self, name: str) -> dict[int, str]:
        path = self.folder / name
        if not path.is_file():
            raise _missing("SplitCUB200", path, self.LAYOUT, "Pass download=True to fetch it.")
        table = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            key, _, value = line.strip().partition(" ")
            if not key.isdigit() or not value:
                raise ValueError(f"SplitCUB200: line {number} of {str(path)!r} is not '<id> <value>': {line!r}.")
            table[int(key)] = value.strip()
        return table

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        images = self.folder / "images"
        if not images.is_dir():
            raise _missing("SplitCUB200", images, self.LAYOUT, "Pass download=True to fetch it.")
        paths = self._table("images.txt")
        labels = self._table("image_class_labels.txt")
        is_train = self._table("train_test_split.txt")
        if not (paths.keys() == labels.keys() == is_train.keys()):
            raise ValueError(
                "SplitCUB200: images.txt, image_class_labels.txt and train_test_split.txt list different ids."
            )
        bad = sorted({c for c in labels.values() if not c.isdigit() or not 1 <= int(c) <= 200})
        if bad:
            raise ValueError(f"SplitCUB200: image_class_labels.txt has classes {bad[:5]} outside 1..200.")
        train: list[tuple[str, int]] = []
        test: list[tuple[str, int]] = []
        for key in sorted(paths):
            pair = (str(images / paths[key]), int(labels[key]) - 1)
            (train if is_train[key] == "1" else test).append(pair)
        return self.datasets(train, test)


class SplitImageNet(_FolderSplit):
    """Class-incremental ImageNet from a local copy: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

    Never downloads (ImageNet's licence requires fetching it yourself); the val folder must be
    sorted into class folders (as torchvision's ``ImageFolder`` reads). Class ``i`` is the ``i``-th
    sorted train folder name, so the class count is that of the folder (1,000 for ILSVRC-2012; a
    subset such as ImageNet-100 works too) and the class-split errors that depend on it come when
    the streams are first built. Scanning the 1.28 M train files takes a few seconds, once; the
    images are read per sample. The default transform is the usual one (train
    ``RandomResizedCrop(224)`` + flip, test ``Resize(256)`` + ``CenterCrop(224)``), then
    ``ToTensor`` and the ImageNet mean/std normalisation.

    Args:
        root: folder holding ``train`` and ``val``.
        num_experiences: number of experiences (a divisor of the class count).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of the class ids.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.

    Raises:
        ValueError: a non-positive ``num_experiences``; at loading, val folders that are not
            train classes and the class-split errors.
        TypeError: a ``class_order`` that is not a sequence.
        FileNotFoundError: at loading, a missing ``train`` or ``val`` folder (naming it and the
            layout) or a class folder without images.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for split in ("train", "val"):
        ...     for wnid in ("n01", "n02", "n03", "n04"):
        ...         (root / split / wnid).mkdir(parents=True)
        ...         Image.new("RGB", (40, 30)).save(root / split / wnid / "0.JPEG", format="JPEG")
        >>> dm = SplitImageNet(root, num_experiences=2, class_order=[3, 2, 1, 0])
        >>> [e.classes_in_this_experience for e in dm.train_stream]
        [(2, 3), (0, 1)]
        >>> tuple(dm.test_stream[0].dataset[0][0].shape)
        (3, 224, 224)
    """

    LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"

    def __init__(
        self,
        root: str | Path,
        num_experiences: int = 10,
        seed: int = 0,
        class_order: Sequence[int] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
    ) -> None:
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        if class_order is not None and (isinstance(class_order, (str, bytes)) or not isinstance(class_order, Sequence)):
            raise TypeError(f"`class_order`: expected a sequence of class ids, got {type(class_order).__name__}.")
        super().__init__(
            root,
            num_experiences,
            seed,
            class_order,
            task_labels,
            batch_size,
            eval_batch_size,
            num_workers,
            train_transform,
            eval_transform,
        )

    def default_transform(self, train: bool) -> Transform:
        return imagenet_transforms(224, 256, train)

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise _missing(
                    "SplitImageNet", self.root / split, self.LAYOUT, "ImageNet is never downloaded: copy it there."
                )
        train, class_to_idx = scan_image_folder(self.root / "train", "root/train", None, IMG_EXTENSIONS)
        test, _ = scan_image_folder(self.root / "val", "root/val", class_to_idx, IMG_EXTENSIONS)
        return self.datasets(train, test)
