"""CIFAR-10 folders for the bench scripts: torchvision's pickle format, written from other pixels.

torchvision's ``CIFAR10`` loads only files whose md5 is in its class lists, so ``write_cifar10``
points those lists at the files it wrote. That changes ``torchvision.datasets.CIFAR10`` for the
rest of the process: only bench scripts call it, never the package or the tests.

* ``write_fake_cifar10`` / ``stage_fake_cifar``: random pixels of the real sizes, for timing the
  data path (``data_throughput.py``) and the CIFAR configs (``reproduce.py --fake-cifar``).
* ``stage_cifar10_standin``: the real images we have offline, the JPEG copy of the CIFAR-10 *test*
  split in ``shared/data/CIFAR10``, split per class into 800 training and 200 test images, so the
  CIFAR configs of ``configs/reproduce_gpu/`` run unchanged on real CIFAR-10 pictures. With 8,000
  training images instead of 50,000 (and JPEG-smoothed) its accuracies are a check that the
  methods learn and keep old classes, not a reproduction of the published figures.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torchvision
from PIL import Image

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
Split = tuple[np.ndarray, list[int]]  # [N, 3072] uint8 rows (all R, then G, then B) and labels


def _write(folder: Path, name: str, entry: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(pickle.dumps(entry))
    return hashlib.md5((folder / name).read_bytes()).hexdigest()


def write_cifar10(root: Path, train: Split, test: Split) -> None:
    """``root/cifar-10-batches-py`` holding ``train`` (in 5 batches) and ``test``."""
    cls = torchvision.datasets.CIFAR10
    folder = root / cls.base_folder
    data, labels = train
    train_list = []
    for name, part in zip(TRAIN_BATCHES, np.array_split(np.arange(len(labels)), 5)):
        entry = {"batch_label": name, "data": data[part], "labels": [labels[i] for i in part]}
        train_list.append([name, _write(folder, name, entry)])
    test_md5 = _write(folder, "test_batch", {"batch_label": "test_batch", "data": test[0], "labels": list(test[1])})
    meta_md5 = _write(folder, "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072})
    cls.train_list, cls.test_list = train_list, [["test_batch", test_md5]]
    cls.meta = {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}


def write_cifar100(root: Path, train: Split, test: Split) -> None:
    """``root/cifar-100-python`` holding ``train`` and ``test`` (fine labels; coarse ones made up)."""
    cls = torchvision.datasets.CIFAR100
    folder = root / cls.base_folder
    md5 = {}
    for name, (data, labels) in (("train", train), ("test", test)):
        entry = {"data": data, "fine_labels": list(labels), "coarse_labels": [y // 5 for y in labels]}
        md5[name] = _write(folder, name, entry)
    meta_md5 = _write(folder, "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    cls.train_list, cls.test_list = [["train", md5["train"]]], [["test", md5["test"]]]
    cls.meta = {"filename": "meta", "key": "fine_label_names", "md5": meta_md5}


def _random(n: int, num_classes: int, generator: np.random.Generator) -> Split:
    return generator.integers(0, 256, (n, 3072), dtype=np.uint8), [i % num_classes for i in range(n)]


def write_fake_cifar10(root: Path, train_images: int = 50_000) -> None:
    """A CIFAR-10 folder with random pixels: ``train_images`` training and as many / 5 test images."""
    generator = np.random.default_rng(0)
    write_cifar10(root, _random(train_images, 10, generator), _random(train_images // 5, 10, generator))


def write_fake_cifar100(root: Path) -> None:
    """A CIFAR-100 folder of the real sizes (50,000 / 10,000) with random pixels."""
    generator = np.random.default_rng(1)
    write_cifar100(root, _random(50_000, 100, generator), _random(10_000, 100, generator))


def stage_fake_cifar() -> Path:
    """A temporary root with random-pixel CIFAR-10 and CIFAR-100 of the real sizes: for timing only."""
    root = Path(tempfile.mkdtemp(prefix="lightning_cl_fake_cifar_"))
    write_fake_cifar10(root)
    write_fake_cifar100(root)
    return root


def stage_cifar10_standin(source: Path, train_per_class: int = 800) -> Path:
    """A temporary root whose CIFAR-10 files hold the JPEG test split of ``source``/CIFAR10, split per class.

    Per class, images ``0 .. train_per_class - 1`` (in the zip's order) train and the rest test.
    """
    archive = source / "CIFAR10" / "cifar10_test_jpg.zip"
    if not archive.is_file():
        raise FileNotFoundError(f"the CIFAR-10 stand-in needs {str(archive)!r} (shared/data/CIFAR10).")
    splits: dict[bool, tuple[list[np.ndarray], list[int]]] = {True: ([], []), False: ([], [])}
    with zipfile.ZipFile(archive) as zf:
        for label, name in enumerate(CIFAR10_CLASSES):
            files = sorted(n for n in zf.namelist() if n.startswith(f"cifar10_test_jpg/{name}/") and n.endswith(".jpg"))
            for i, file in enumerate(files):
                pixels = np.asarray(Image.open(io.BytesIO(zf.read(file))).convert("RGB"), dtype=np.uint8)
                rows, labels = splits[i < train_per_class]
                rows.append(pixels.transpose(2, 0, 1).reshape(-1))  # CIFAR rows: all R, then G, then B
                labels.append(label)
    root = Path(tempfile.mkdtemp(prefix="lightning_cl_cifar_standin_"))
    write_cifar10(root, *((np.stack(splits[t][0]), splits[t][1]) for t in (True, False)))
    return root
