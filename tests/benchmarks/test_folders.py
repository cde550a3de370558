"""SplitTinyImageNet, SplitCUB200, SplitImageNet over small fake folders in their official layouts."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lightning_cl.benchmarks.folders import (
    CUB200_URL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY_IMAGENET_URL,
    SplitCUB200,
    SplitImageNet,
    SplitTinyImageNet,
)
from lightning_cl.benchmarks.image_folder import ImageFiles

WNIDS = [f"n{k:08d}" for k in range(200)]
ORDER = WNIDS[::-1]  # wnids.txt order, deliberately not sorted: class i is its i-th line


def image(path: Path, value: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color=(value, 128, 255 - value)).save(path, format=fmt)


def fake_tiny(root: Path) -> Path:
    """tiny-imagenet-200 with 2 train and 1 val image per class; pixel red = class id."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(ORDER) + "\n")
    lines = []
    for i, wnid in enumerate(ORDER):
        for j in range(2):
            image(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", i, "JPEG")
        image(folder / "val" / "images" / f"val_{i}.JPEG", i, "JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t8\t6")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def fake_cub(root: Path) -> Path:
    """CUB_200_2011 with 3 images per class (ids from 1), the first of each class a test image."""
    folder = root / "CUB_200_2011"
    paths, labels, split = [], [], []
    key = 0
    for c in range(1, 201):
        for j in range(3):
            key += 1
            rel = f"{c:03d}.Bird_{c}/img_{j}.jpg"
            image(folder / "images" / rel, c - 1, "JPEG")
            paths.append(f"{key} {rel}")
            labels.append(f"{key} {c}")
            split.append(f"{key} {int(j > 0)}")
    (folder / "images.txt").write_text("\n".join(paths) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def fake_imagenet(root: Path, classes: int = 4) -> Path:
    for i in range(classes):
        for j in range(3):
            image(root / "train" / f"n{i:08d}" / f"{j}.JPEG", i, "JPEG")
        image(root / "val" / f"n{i:08d}" / "0.JPEG", i, "JPEG")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_cub(tmp_path_factory.mktemp("cub"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def no_image_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", refuse)


def red(x: torch.Tensor) -> int:
    """The red value 0..255 written, undone from the ImageNet normalisation."""
    return round(float(x[0].mean() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255)


def test_tiny_imagenet_ids_follow_wnids_txt_and_split_into_experiences(tiny: Path, no_image_opened: None) -> None:
    dm = SplitTinyImageNet(tiny, num_experiences=10, download=False)
    train, test = dm.load_datasets()
    assert isinstance(train, ImageFiles) and isinstance(test, ImageFiles)
    assert (len(train), len(test)) == (400, 200)
    for dataset in (train, test):
        for path, y in zip(dataset.paths, dataset.targets.tolist()):
            wnid = Path(path).parts[-3] if dataset is train else ORDER[int(Path(path).stem.split("_")[1])]
            assert ORDER.index(wnid) == y
    assert [len(e) for e in dm.train_stream] == [40] * 10 and [len(e) for e in dm.test_stream] == [20] * 10
    assert sorted(c for e in dm.train_stream for c in e.classes_in_this_experience) == list(range(200))
    assert dm.num_classes == 200 and dm.num_experiences == 10


def test_tiny_imagenet_default_transforms_give_normalised_64x64(tiny: Path) -> None:
    dm = SplitTinyImageNet(tiny, num_experiences=2, class_order=list(range(200)), download=False)
    for stream in (dm.train_stream, dm.test_stream):
        x, y = stream[1].dataset[0]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert abs(red(x) - y) <= 3  # JPEG is lossy; red channel = class id
        assert 100 <= y < 200


def test_cub_ids_from_one_and_official_train_test_split(cub: Path, no_image_opened: None) -> None:
    dm = SplitCUB200(cub, num_experiences=10, download=False, class_order=list(range(200)))
    train, test = dm.load_datasets()
    assert (len(train), len(test)) == (400, 200)
    assert torch.equal(test.targets, torch.arange(200))
    assert torch.equal(train.targets, torch.arange(200).repeat_interleave(2))
    assert all(Path(p).name != "img_0.jpg" for p in train.paths) and all(
        Path(p).name == "img_0.jpg" for p in test.paths
    )
    assert dm.train_stream[0].classes_in_this_experience == tuple(range(20))
    assert [len(e) for e in dm.train_stream] == [40] * 10


def test_cub_default_transforms_crop_to_224(cub: Path) -> None:
    dm = SplitCUB200(cub, num_experiences=1, download=False)
    x, y = dm.test_stream[0].dataset[0]
    assert x.shape == (3, 224, 224)
    assert abs(red(x) - y) <= 3
    assert dm.train_stream[0].dataset[0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("cls", [SplitTinyImageNet, SplitCUB200, SplitImageNet])
def test_train_and_eval_transforms_override_the_defaults(cls: Any, tmp_path: Path, tiny: Path, cub: Path) -> None:
    root = {SplitTinyImageNet: tiny, SplitCUB200: cub, SplitImageNet: fake_imagenet(tmp_path)}[cls]
    dm = cls(
        root,
        num_experiences=2,
        train_transform=T.Compose([T.Resize((5, 7)), T.ToTensor()]),
        eval_transform=T.Compose([T.Resize((3, 4)), T.ToTensor()]),
    )
    assert dm.train_stream[0].dataset[0][0].shape == (3, 5, 7)
    assert dm.test_stream[0].dataset[0][0].shape == (3, 3, 4)


def test_imagenet_reads_class_folders_sorted(tmp_path: Path, no_image_opened: None) -> None:
    dm = SplitImageNet(fake_imagenet(tmp_path), num_experiences=2, class_order=[3, 1, 0, 2])
    assert [e.classes_in_this_experience for e in dm.train_stream] == [(1, 3), (0, 2)]
    assert [len(e) for e in dm.train_stream] == [6, 6] and [len(e) for e in dm.test_stream] == [2, 2]
    train, _ = dm.load_datasets()
    assert isinstance(train, ImageFiles)
    assert [int(Path(p).parent.name[1:]) for p in train.paths] == train.targets.tolist()


def test_imagenet_default_transform_and_class_split_error(tmp_path: Path) -> None:
    root = fake_imagenet(tmp_path)
    x, y = SplitImageNet(root, num_experiences=4).test_stream[0].dataset[0]
    assert x.shape == (3, 224, 224) and abs(red(x) - y) <= 3
    with pytest.raises(ValueError, match="num_experiences"):
        _ = SplitImageNet(root, num_experiences=3).train_stream  # 4 classes


@pytest.mark.parametrize("missing", ["train", "val"])
def test_imagenet_missing_folder_names_it_and_the_layout(tmp_path: Path, missing: str, offline: None) -> None:
    root = fake_imagenet(tmp_path)
    for path in sorted((root / missing).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / missing).rmdir()
    dm = SplitImageNet(root, num_experiences=2)
    dm.prepare_data()  # never downloads
    with pytest.raises(FileNotFoundError, match=rf"{missing}'.*train/<wnid>/\*\.JPEG.*never downloaded"):
        dm.setup("fit")
        _ = dm.train_stream


@pytest.mark.parametrize(
    ("cls", "name", "url"),
    [(SplitTinyImageNet, "tiny-imagenet-200", TINY_IMAGENET_URL), (SplitCUB200, "CUB_200_2011", CUB200_URL)],
)
def test_missing_folder_errors_and_offline_download(
    cls: Any, name: str, url: str, tmp_path: Path, offline: None
) -> None:
    dm = cls(tmp_path, download=False)
    dm.prepare_data()  # nothing to do
    with pytest.raises(FileNotFoundError, match=rf"{name}.*download=True"):
        _ = dm.train_stream
    with pytest.raises(FileNotFoundError, match=rf"could not download {url}.*md5"):
        cls(tmp_path, download=True).prepare_data()


@pytest.mark.parametrize("cls", [SplitTinyImageNet, SplitCUB200])
def test_download_is_skipped_when_the_folder_is_there(cls: Any, tiny: Path, cub: Path, offline: None) -> None:
    root = tiny if cls is SplitTinyImageNet else cub
    cls(root, download=True).prepare_data()  # offline: would raise if it tried


def test_tiny_imagenet_missing_class_folder_is_named(tmp_path: Path) -> None:
    root = fake_tiny(tmp_path)
    (root / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join([*ORDER[:-1], "n99999999"]))
    with pytest.raises(FileNotFoundError, match="n99999999"):
        SplitTinyImageNet(root, download=False).load_datasets()


@pytest.mark.parametrize("cls", [SplitTinyImageNet, SplitCUB200, SplitImageNet])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 0}, ValueError, "num_experiences"),
        ({"class_order": "abc"}, TypeError, "class_order"),
        ({"train_transform": 3}, TypeError, "train_transform"),
        ({"eval_transform": "x"}, TypeError, "eval_transform"),
    ],
)
def test_bad_arguments(cls: Any, kwargs: dict[str, Any], error: type[Exception], match: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        cls(tmp_path, **kwargs)


@pytest.mark.parametrize("cls", [SplitTinyImageNet, SplitCUB200])
def test_class_count_is_checked_before_reading(cls: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_experiences"):
        cls(tmp_path, num_experiences=7, download=False)  # 200 classes
