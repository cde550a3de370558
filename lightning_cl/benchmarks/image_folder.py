"""Streams over a user's own image files: a class-per-folder tree, or a list of (path, class id)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import ToTensor

from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.core.datamodule import StreamDataModule

PathLike = str | os.PathLike[str]


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` as an RGB PIL image (what torchvision's ImageFolder loads)."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


class ImageFiles(Dataset):
    """Images read from files one at a time: ``(transform(loader(path)), class_id)``.

    The targets are known without opening any image (``targets``), so splitting by class is
    immediate; ``paths[i]`` is the file of item ``i``.

    Args:
        files: ``(path, class_id)`` pairs.
        transform: applied to each loaded image (by default ``ToTensor``: a float ``[C, H, W]``
            tensor in [0, 1]; images of different sizes need a ``Resize`` to be batched).
        loader: reads a path (by default an RGB PIL image).
    """

    def __init__(
        self,
        files: Sequence[tuple[PathLike, int]],
        transform: Callable[[Any], Any] | None = None,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        self.paths = [os.fspath(path) for path, _ in files]
        self.targets = torch.tensor([int(y) for _, y in files], dtype=torch.long)
        self.transform = ToTensor() if transform is None else transform
        self.loader = load_rgb if loader is None else loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.loader(self.paths[i])), int(self.targets[i])


def _class_folders(root: Path, name: str) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"`{name}`: no folder at {str(root)!r}.")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"`{name}`: {str(root)!r} holds no class folder; expected one sub-folder per class "
            "(root/<class>/<image>), as torchvision's ImageFolder reads."
        )
    return classes


def scan_image_folder(
    root: PathLike, name: str, class_to_idx: dict[str, int] | None, extensions: tuple[str, ...]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """``(path, class id)`` of every image under ``root/<class>/``, and the class ids by folder name.

    Class ids follow the sorted folder names (torchvision's ImageFolder rule), and every class
    folder must hold an image; with ``class_to_idx`` (the test folder, with the train folder's
    ids) the folders must be known classes and may be empty, but not all of them.
    """
    folder = Path(root)
    classes = _class_folders(folder, name)
    every_class = class_to_idx is None
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(classes) - set(class_to_idx))
    if unknown:
        raise ValueError(
            f"`{name}`: class folders {unknown} of {str(folder)!r} are not train classes "
            f"(the train folder has {sorted(class_to_idx)})."
        )
    present = {c: class_to_idx[c] for c in classes}
    files = make_dataset(str(folder), present, extensions=extensions, allow_empty=True)
    found = {y for _, y in files}
    empty = [c for c in classes if present[c] not in found]
    if empty and (every_class or not files):
        raise FileNotFoundError(
            f"`{name}`: the class folders {empty} of {str(folder)!r} hold no image file "
            f"(extensions {list(extensions)})."
        )
    return files, class_to_idx


def image_folder(
    train_root: PathLike,
    test_root: PathLike,
    *,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    task_labels: bool = False,
    transform: Callable[[Any], Any] | None = None,
    train_transform: Callable[[Any], Any] | None = None,
    loader: Callable[[str], Any] | None = None,
    extensions: Sequence[str] = IMG_EXTENSIONS,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A class-incremental stream over image folders laid out as torchvision's ``ImageFolder`` reads.

    ``train_root/<class>/<image>`` and ``test_root/<class>/<image>``: the class ids are the
    sorted folder names of ``train_root`` (class ``i`` is the ``i``-th name), the test folder
    uses the same ids (it may lack classes, not add any). The folders are scanned once, without
    opening an image; images are then read one per sample (the per-sample path), in loader
    workers when ``num_workers > 0``. The split by class is that of
    :func:`~lightning_cl.benchmarks.class_incremental`.

    Args:
        train_root: folder of the training images.
        test_root: folder of the test images.
        num_experiences: number of experiences (must divide the number of classes unless
            ``classes_per_experience`` is given).
        classes_per_experience: classes per experience: one int, or one size per experience.
        class_order: order in which the classes arrive (class ids, see above); by default
            shuffled with ``seed``.
        seed: seed of the class order.
        task_labels: add the experience index as a task label.
        transform: applied to every loaded image, train and test (decode, resize, normalise);
            by default ``ToTensor``.
        train_transform: replaces ``transform`` for the train stream (e.g. with augmentation).
        loader: reads a file (by default an RGB PIL image).
        extensions: the file name endings counted as images (case-insensitive).
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.

    Raises:
        FileNotFoundError: a missing folder, a folder without class folders or a train class
            folder without images (naming it).
        ValueError: test class folders that are not train classes, and the class-split errors.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for split in ("train", "test"):
        ...     for name in ("cat", "dog", "owl"):
        ...         (root / split / name).mkdir(parents=True)
        ...         Image.new("RGB", (5, 4)).save(root / split / name / "0.png")
        >>> dm = image_folder(root / "train", root / "test", num_experiences=3, class_order=[2, 0, 1])
        >>> [e.classes_in_this_experience for e in dm.train_stream]
        [(2,), (0,), (1,)]
        >>> x, y = dm.train_stream[0].dataset[0]
        >>> tuple(x.shape), int(y)
        ((3, 4, 5), 2)
    """
    ext = tuple(extensions)
    train_files, class_to_idx = scan_image_folder(train_root, "train_root", None, ext)
    test_files, _ = scan_image_folder(test_root, "test_root", class_to_idx, ext)
    return class_incremental(
        ImageFiles(train_files, train_transform or transform, loader),
        ImageFiles(test_files, transform, loader),
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        seed=seed,
        task_labels=task_labels,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
    )


def read_file_list(
    files: Sequence[tuple[PathLike, int]] | PathLike, root: PathLike | None, name: str
) -> list[tuple[str, int]]:
    """``files`` as checked ``(path, class id)`` pairs, relative paths resolved against ``root``.

    ``files`` may be a text file with one ``<path> <class id>`` per line (Caffe / Avalanche
    ``filelist_benchmark`` style); its relative paths are then resolved against ``root``, or the
    file's own folder.
    """
    base: Path | None = None if root is None else Path(root)
    pairs: list[tuple[PathLike, int]] = []
    if isinstance(files, (str, os.PathLike)):
        listing = Path(files)
        if not listing.is_file():
            raise FileNotFoundError(f"`{name}`: no file list at {str(listing)!r}.")
        base = base or listing.parent
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            path, _, label = line.strip().rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise ValueError(f"`{name}`: line {number} of {str(listing)!r} is not '<path> <class id>': {line!r}.")
            pairs.append((path.strip(), int(label)))
    else:
        if isinstance(files, (bytes, Dataset)) or not isinstance(files, Sequence):
            raise TypeError(
                f"`{name}`: expected (path, class id) pairs or a file list's path, got {type(files).__name__}."
            )
        pairs = list(files)  # type: ignore[arg-type]  # a str was handled above
    if not pairs:
        raise ValueError(f"`{name}`: expected at least one (path, class id) pair, got none.")
    checked = []
    for k, pair in enumerate(pairs):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or isinstance(pair[1], bool)
            or not isinstance(pair[1], int)
        ):
            raise TypeError(f"`{name}[{k}]`: expected a (path, class id) pair, got {pair!r}.")
        file = Path(pair[0])
        if base is not None and not file.is_absolute():
            file = base / file
        checked.append((str(file), pair[1]))
    missing = [path for path, _ in checked if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"`{name}`: {len(missing)} of {len(checked)} files are missing, e.g. {missing[:3]}.")
    return checked


def file_list(
    train_files: Sequence[tuple[PathLike, int]] | PathLike,
    test_files: Sequence[tuple[PathLike, int]] | PathLike,
    *,
    root: PathLike | None = None,
    num_experiences: int | None = None,
    classes_per_experience: int | Sequence[int] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    task_labels: bool = False,
    transform: Callable[[Any], Any] | None = None,
    train_transform: Callable[[Any], Any] | None = None,
    loader: Callable[[str], Any] | None = None,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
) -> StreamDataModule:
    """A class-incremental stream over image files listed with their class ids.

    Each list is a sequence of ``(path, class_id)`` pairs, or the path of a text file with one
    ``<path> <class id>`` per line. Relative paths are resolved against ``root`` (for a text
    file, by default the file's folder). Every file must exist (checked once, up front); the
    images are read one per sample, as in :func:`image_folder`, whose other arguments these are.

    Raises:
        FileNotFoundError: a missing list or image file (naming the list and some of the files).
        TypeError: entries that are not ``(path, int)`` pairs.
        ValueError: an empty list, a malformed line, and the class-split errors.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for i in range(4):
        ...     Image.new("RGB", (2, 2)).save(root / f"{i}.png")
        >>> files = [(f"{i}.png", i % 2) for i in range(4)]
        >>> dm = file_list(files, files, root=root, num_experiences=2, class_order=[1, 0])
        >>> [len(e) for e in dm.train_stream], dm.train_stream[0].classes_in_this_experience
        ([2, 2], (1,))
    """
    train = read_file_list(train_files, root, "train_files")
    test = read_file_list(test_files, root, "test_files")
    return class_incremental(
        ImageFiles(train, train_transform or transform, loader),
        ImageFiles(test, transform, loader),
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        seed=seed,
        task_labels=task_labels,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
    )
