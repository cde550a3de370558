"""SplitOmniglot: class-incremental Omniglot read from its extracted character folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.utils import check_md5, download_and_extract_archive

from lightning_cl.benchmarks.folders import Transform, _FolderSplit, _missing
from lightning_cl.benchmarks.image_folder import ImageFiles

OMNIGLOT_FOLDERS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
TRAIN_DRAWINGS = 15  # of each character's 20 drawings, the first 15 (sorted file names) train, the rest test
#: Where torchvision's ``Omniglot`` downloads from: the ``python/`` folder of the authors' repository
#: (brendenlake/omniglot), which also holds the two small background sets.
OMNIGLOT_URL = torchvision.datasets.Omniglot.download_url_prefix
#: md5 of each folder's zip: torchvision's for the full sets, the authors' files for the small ones.
OMNIGLOT_MD5 = {
    **torchvision.datasets.Omniglot.zips_md5,
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
TORCHVISION_FOLDER = torchvision.datasets.Omniglot.folder  # "omniglot-py", where torchvision extracts


def omniglot_folder(root: str | Path, folder: str) -> Path:
    """Where ``folder`` is under ``root``: ``root/<folder>``, or torchvision's ``root/omniglot-py/<folder>``.

    Returns ``root/<folder>`` when neither exists.
    """
    ours, theirs = Path(root) / folder, Path(root) / TORCHVISION_FOLDER / folder
    return theirs if not ours.is_dir() and theirs.is_dir() else ours


def download_omniglot(root: str | Path, folder: str) -> None:
    """Download ``<folder>.zip`` into ``root`` and extract it, unless the folder is there.

    Does what ``torchvision.datasets.Omniglot(root, download=True)`` does (same URL, md5
    checked, an archive already there with the right md5 is only extracted), for the four
    folders of :data:`OMNIGLOT_MD5` (torchvision knows only the two full ones), into
    ``root/<folder>``. A folder torchvision extracted (``root/omniglot-py/<folder>``) counts as there.

    Raises:
        ValueError: an unknown ``folder``.
        FileNotFoundError: when the archive could not be fetched (offline, say), naming the data
            set, the folder, the archive and whether it is missing or fails its md5 check.
    """
    if folder not in OMNIGLOT_MD5:
        raise ValueError(f"`folder`: expected one of {list(OMNIGLOT_MD5)}, got {folder!r}.")
    if omniglot_folder(root, folder).is_dir():
        return
    url, md5, archive = f"{OMNIGLOT_URL}/{folder}.zip", OMNIGLOT_MD5[folder], Path(root) / f"{folder}.zip"
    try:
        download_and_extract_archive(url, download_root=str(root), filename=archive.name, md5=md5)
    except (OSError, RuntimeError) as error:
        if not archive.is_file():
            problem = f"{archive.name} is missing"
        elif not check_md5(str(archive), md5):
            problem = f"{archive.name} fails its md5 check (expected {md5})"
        else:
            problem = str(error)
        raise FileNotFoundError(
            f"SplitOmniglot: could not download {url} into {str(root)!r} ({problem}; {error}); copy {archive.name} "
            f"(md5 {md5}) there, or its extracted folder {folder!r}, and run again."
        ) from error


def load_gray(path: str) -> Image.Image:
    """The image at ``path`` as a one-channel (``"L"``) PIL image."""
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


class SplitOmniglot(_FolderSplit):
    """Class-incremental Omniglot: every character is a class, split by class into experiences.

    Reads the extracted official folder ``root/<folder>/<alphabet>/<character>/*.png`` (``folder``
    one of ``images_background`` (964 characters), ``images_evaluation`` (659),
    ``images_background_small1`` (136) or ``images_background_small2`` (146)), or the one
    torchvision's ``Omniglot`` extracted, ``root/omniglot-py/<folder>``. With ``download`` (the
    default), ``prepare_data`` (rank 0 only) downloads ``<folder>.zip`` from where torchvision's
    ``Omniglot`` does, checks its md5 and extracts it, unless the folder is there
    (:func:`download_omniglot`). Class ``i`` is the ``i``-th ``(alphabet, character)`` pair in
    sorted order. Omniglot has no train/test split: each character's drawings are sorted by file
    name, the first 15 go to the train set and the others (5 of the usual 20) to the test set.
    The class count is only known when the folder is scanned, so ``num_experiences`` must divide
    it (136 = 8 * 17 for ``images_background_small1``) and that error comes when the streams are
    first built. Images are 105x105 binary drawings read per sample as one-channel images; the
    default transform is ``ToTensor`` (``[1, 105, 105]`` in [0, 1]).

    Args:
        root: folder holding (or receiving) ``folder``.
        num_experiences: number of experiences (a divisor of the character count).
        seed: seed of the class order (when ``class_order`` is None).
        class_order: order of the classes, a permutation of the class ids.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        folder: which Omniglot folder to read (see above).
        download: download and extract ``<folder>.zip`` (md5 checked) in ``prepare_data`` unless
            the folder is there.
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.

    Raises:
        ValueError: a non-positive ``num_experiences``, an unknown ``folder``; at loading, a
            character with fewer than 16 drawings and the class-split errors.
        TypeError: a ``class_order`` that is not a sequence, a transform that is not callable.
        FileNotFoundError: at loading, a missing folder, naming it and the layout; in
            ``prepare_data``, an archive that could not be downloaded (see :func:`download_omniglot`).

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
        download: bool = True,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
    ) -> None:
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        if class_order is not None and (isinstance(class_order, (str, bytes)) or not isinstance(class_order, Sequence)):
            raise TypeError(f"`class_order`: expected a sequence of class ids, got {type(class_order).__name__}.")
        if folder not in OMNIGLOT_FOLDERS:
            raise ValueError(f"`folder`: expected one of {list(OMNIGLOT_FOLDERS)}, got {folder!r}.")
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

    def prepare_data(self) -> None:
        if self.download:
            download_omniglot(self.root, self.folder)

    def default_transform(self, train: bool) -> Transform:
        return T.ToTensor()

    def datasets(
        self, train_files: list[tuple[str, int]], test_files: list[tuple[str, int]]
    ) -> tuple[Dataset, Dataset]:
        train_t = self.train_transform or self.default_transform(True)
        eval_t = self.eval_transform or self.default_transform(False)
        return ImageFiles(train_files, train_t, load_gray), ImageFiles(test_files, eval_t, load_gray)

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        base = omniglot_folder(self.root, self.folder)
        if not base.is_dir():
            raise _missing(
                "SplitOmniglot",
                base,
                self.LAYOUT,
                f"Pass download=True to fetch {self.folder}.zip, or extract it there.",
            )
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
