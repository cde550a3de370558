"""SplitOmniglot: class-incremental Omniglot read from its extracted character folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from lightning_cl.benchmarks.folders import Transform, _FolderSplit, _missing
from lightning_cl.benchmarks.image_folder import ImageFiles

OMNIGLOT_FOLDERS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
TRAIN_DRAWINGS = 15  # of each character's 20 drawings, the first 15 (sorted file names) train, the rest test


def load_gray(path: str) -> Image.Image:
    """The image at ``path`` as a one-channel (``"L"``) PIL image."""
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


class SplitOmniglot(_FolderSplit):
    """Class-incremental Omniglot: every character is a class, split by class into experiences.

    Reads the extracted official folder ``root/<folder>/<alphabet>/<character>/*.png`` (``folder``
    one of ``images_background`` (964 characters), ``images_evaluation`` (659),
    ``images_background_small1`` (136) or ``images_background_small2`` (146)); torchvision's
    ``Omniglot`` is not used, as it checks the md5 of the full zips, and nothing is downloaded.
    Class ``i`` is the ``i``-th ``(alphabet, character)`` pair in sorted order. Omniglot has no
    train/test split: each character's drawings are sorted by file name, the first 15 go to the
    train set and the others (5 of the usual 20) to the test set. The class count is only known
    when the folder is scanned, so ``num_experiences`` must divide it (136 = 8 * 17 for
    ``images_background_small1``) and that error comes when the streams are first built. Images
    are 105x105 binary drawings read per sample as one-channel images; the default transform is
    ``ToTensor`` (``[1, 105, 105]`` in [0, 1]).

    Args:
        root: folder holding the extracted ``folder``.
        num_experiences: number of experiences (a divisor of the character count).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of the class ids.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        folder: which Omniglot folder to read (see above).
        download: must be False (kept for the signature of the other benchmarks).
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.

    Raises:
        ValueError: a non-positive ``num_experiences``, an unknown ``folder``, ``download=True``;
            at loading, a character with fewer than 16 drawings and the class-split errors.
        TypeError: a ``class_order`` that is not a sequence, a transform that is not callable.
        FileNotFoundError: at loading, a missing folder, naming it and the layout.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for alphabet, character in [("Greek", "character01"), ("Greek", "character02")]:
        ...     path = root / "images_background" / alphabet / character
        ...     path.mkdir(parents=True)
        ...     for k in range(20):
        ...         Image.new("1", (105, 105)).save(path / f"{k:02d}.png")
        >>> dm = SplitOmniglot(root, num_experiences=2, class_order=[1, 0])
        >>> [(e.classes_in_this_experience, len(e)) for e in dm.train_stream]
        [((1,), 15), ((0,), 15)]
        >>> tuple(dm.test_stream[0].dataset[0][0].shape), len(dm.test_stream[0])
        ((1, 105, 105), 5)
    """

    LAYOUT = "<root>/<folder>/<alphabet>/<character>/*.png"

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
        folder: str = "images_background",
        download: bool = False,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
    ) -> None:
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        if class_order is not None and (isinstance(class_order, (str, bytes)) or not isinstance(class_order, Sequence)):
            raise TypeError(f"`class_order`: expected a sequence of class ids, got {type(class_order).__name__}.")
        if folder not in OMNIGLOT_FOLDERS:
            raise ValueError(f"`folder`: expected one of {list(OMNIGLOT_FOLDERS)}, got {folder!r}.")
        if download:
            raise ValueError(
                "`download`: expected False; SplitOmniglot reads an extracted folder and never downloads "
                "(torchvision's checked zips are not used)."
            )
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
        self.folder = folder
        self.download = download

    def default_transform(self, train: bool) -> Transform:
        return T.ToTensor()

    def datasets(
        self, train_files: list[tuple[str, int]], test_files: list[tuple[str, int]]
    ) -> tuple[Dataset, Dataset]:
        train_t = self.train_transform or self.default_transform(True)
        eval_t = self.eval_transform or self.default_transform(False)
        return ImageFiles(train_files, train_t, load_gray), ImageFiles(test_files, eval_t, load_gray)

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        base = self.root / self.folder
        if not base.is_dir():
            raise _missing("SplitOmniglot", base, self.LAYOUT, "Extract the Omniglot zip there (never downloaded).")
        characters = sorted(
            (alphabet.name, character.name)
            for alphabet in os.scandir(base)
            if alphabet.is_dir()
            for character in os.scandir(alphabet.path)
            if character.is_dir()
        )
        if not characters:
            raise _missing("SplitOmniglot", base / "<alphabet>" / "<character>", self.LAYOUT, "No character folder.")
        train: list[tuple[str, int]] = []
        test: list[tuple[str, int]] = []
        for class_id, (alphabet, character) in enumerate(characters):
            path = base / alphabet / character
            drawings = sorted(name for name in os.listdir(path) if name.lower().endswith(".png"))
            if len(drawings) <= TRAIN_DRAWINGS:
                raise ValueError(
                    f"SplitOmniglot: {str(path)!r} holds {len(drawings)} .png drawings, expected more than "
                    f"{TRAIN_DRAWINGS} (the first {TRAIN_DRAWINGS} train, the rest test)."
                )
            train += [(str(path / name), class_id) for name in drawings[:TRAIN_DRAWINGS]]
            test += [(str(path / name), class_id) for name in drawings[TRAIN_DRAWINGS:]]
        return self.datasets(train, test)
