"""SplitCIFAR10/100/110 on small fake files in torchvision's exact on-disk CIFAR format."""

from __future__ import annotations

import hashlib
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from lightning_cl.benchmarks.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitCIFAR110,
)
from lightning_cl.core.data import InMemoryDataset

CIFAR10 = torchvision.datasets.CIFAR10
CIFAR100 = torchvision.datasets.CIFAR100
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
PER_BATCH_10 = 20  # 5 batches of 20: 10 train images per CIFAR-10 class, 2 test images per class
TEST_10 = 20
TRAIN_100, TEST_100 = 200, 100  # 2 train and 1 test image per CIFAR-100 class
# the first CIFAR-10 train image: red plane 255, green plane 0, blue plane 128
KNOWN_PLANES = (255, 0, 128)
NOT_A_SEQUENCE: Any = "abc"  # a str is a Sequence, but not one of class ids


def _rows(n: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3072), generator=generator, dtype=torch.uint8).numpy()


def _write(path: Path, entry: dict[str, Any]) -> str:
    # the real files are Python 2 pickles whose str keys torchvision reads back as str ("data", "labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar10(root: Path) -> dict[str, Any]:
    folder = root / CIFAR10.base_folder
    rows = {name: _rows(PER_BATCH_10, seed=k) for k, name in enumerate(CIFAR10_TRAIN)}
    rows[CIFAR10_TRAIN[0]][0] = np.repeat(np.array(KNOWN_PLANES, dtype=np.uint8), 1024)
    rows["test_batch"] = _rows(TEST_10, seed=10)
    md5 = {}
    for name, data in rows.items():
        labels = [i % 10 for i in range(len(data))]
        md5[name] = _write(folder / name, {"batch_label": name, "data": data, "labels": labels})
    meta = _write(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return {
        "train_list": [[name, md5[name]] for name in CIFAR10_TRAIN],
        "test_list": [["test_batch", md5["test_batch"]]],
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta},
        "rows": rows,
    }


def _write_cifar100(root: Path) -> dict[str, Any]:
    folder = root / CIFAR100.base_folder
    rows = {"train": _rows(TRAIN_100, seed=20), "test": _rows(TEST_100, seed=21)}
    md5 = {}
    for name, data in rows.items():
        fine = [i % 100 for i in range(len(data))]
        md5[name] = _write(folder / name, {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]})
    meta = _write(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    return {
        "train_list": [["train", md5["train"]]],
        "test_list": [["test", md5["test"]]],
        "meta": {"filename": "meta", "key": "fine_label_names", "md5": meta},
        "rows": rows,
    }


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, _write_cifar10(root), _write_cifar100(root)


@pytest.fixture
def root(fake_cifar: tuple[Path, dict[str, Any], dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake data's folder, with torchvision's md5 lists pointing at the fake files and no network."""
    path, ten, hundred = fake_cifar
    for cls, spec in ((CIFAR10, ten), (CIFAR100, hundred)):
        for attr in ("train_list", "test_list", "meta"):
            monkeypatch.setattr(cls, attr, spec[attr])
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return path


def no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a CIFAR benchmark opened a network connection")


def offline(*args: object, **kwargs: object) -> None:
    raise OSError("network is unreachable (test)")


def test_split_cifar10_sizes_and_classes(root: Path) -> None:
    dm = SplitCIFAR10(root=root, class_order=list(range(10)), download=True)
    dm.prepare_data()  # files present with the right md5: no download
    assert (dm.num_experiences, dm.num_classes) == (5, 10)
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [e.classes_in_this_experience for e in dm.train_stream] == pairs
    assert [e.classes_in_this_experience for e in dm.test_stream] == pairs
    assert [len(e) for e in dm.train_stream] == [20] * 5
    assert [len(e) for e in dm.test_stream] == [4] * 5
    for k, e in enumerate(dm.train_stream):
        assert torch.bincount(e.dataset.targets, minlength=10).tolist() == [  # type: ignore[attr-defined]
            10 if c in pairs[k] else 0 for c in range(10)
        ]
        assert e.task_label == 0 and len(e.dataset[0]) == 2


def test_split_cifar100_sizes_and_classes(root: Path) -> None:
    dm = SplitCIFAR100(root=root, seed=3)
    assert (dm.num_experiences, dm.num_classes) == (10, 100)
    train, test = dm.train_stream, dm.test_stream
    groups = [set(e.classes_in_this_experience) for e in train]
    assert [len(g) for g in groups] == [10] * 10
    assert set().union(*groups) == set(range(100))
    assert groups != [set(range(10 * k, 10 * k + 10)) for k in range(10)]  # seed 3 shuffles the classes
    assert [set(e.classes_in_this_experience) for e in test] == groups
    assert [len(e) for e in train] == [20] * 10 and [len(e) for e in test] == [10] * 10
    assert all(set(e.dataset.targets.tolist()) == g for e, g in zip(train, groups))  # type: ignore[attr-defined]


def test_pixels_round_trip(root: Path, fake_cifar: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    _, ten, hundred = fake_cifar
    dm = SplitCIFAR10(root=root, class_order=list(range(10)), download=False)
    data = dm.train_stream[0].dataset
    assert isinstance(data, InMemoryDataset)
    raw = data.inputs
    assert raw.dtype == torch.uint8 and raw.shape == (100, 3, 32, 32) and raw.is_contiguous()
    # the rows on disk are channel-major [3 * 1024]: the tensor must be exactly their reshape
    expected = np.concatenate([ten["rows"][name] for name in CIFAR10_TRAIN]).reshape(-1, 3, 32, 32)
    assert torch.equal(raw, torch.from_numpy(expected))
    # the known first image (class 0, first item of experience 0), normalised by hand
    x, y = data[0]
    assert int(y) == 0 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    by_hand = [(p / 255 - m) / s for p, m, s in zip(KNOWN_PLANES, CIFAR10_MEAN, CIFAR10_STD)]
    assert by_hand == pytest.approx([2.0591, -1.9803, 0.2120], abs=1e-4)
    torch.testing.assert_close(x, torch.tensor(by_hand).view(3, 1, 1).expand(3, 32, 32))

    test = SplitCIFAR100(root=root, class_order=list(range(100)), download=False).test_stream[0].dataset
    x100, y100 = test[3]
    pixels = torch.from_numpy(hundred["rows"]["test"][3]).view(3, 32, 32).float() / 255
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    assert int(y100) == 3
    torch.testing.assert_close(x100, (pixels - mean) / std)


def test_split_cifar110_offsets_and_experiences(root: Path) -> None:
    order = list(range(99, -1, -1))
    dm = SplitCIFAR110(root=root, class_order=order, download=True)
    dm.prepare_data()
    assert (dm.num_experiences, dm.num_classes) == (11, 110)
    train, test = dm.train_stream, dm.test_stream
    expected = [tuple(range(10))] + [tuple(sorted(c + 10 for c in order[10 * k : 10 * k + 10])) for k in range(10)]
    assert [e.classes_in_this_experience for e in train] == expected
    assert [e.classes_in_this_experience for e in test] == expected
    assert [len(e) for e in train] == [100] + [20] * 10
    assert [len(e) for e in test] == [20] + [10] * 10
    assert [e.index for e in train] == list(range(11))
    assert torch.bincount(train[0].dataset.targets).tolist() == [10] * 10  # type: ignore[attr-defined]
    # experience 1 holds CIFAR-100 classes 90..99 as 100..109, with CIFAR-100's normalisation
    shifted = train[1].dataset
    reference = SplitCIFAR100(root=root, class_order=order, download=False).train_stream[0].dataset
    assert set(reference.targets.tolist()) == set(range(90, 100))  # type: ignore[attr-defined]
    assert torch.equal(shifted.targets, reference.targets + 10)  # type: ignore[attr-defined]
    items = list(range(len(reference)))  # type: ignore[arg-type]
    x, _ = shifted.__getitems__(items).tensors  # type: ignore[attr-defined]
    x_ref, _ = reference.__getitems__(items).tensors  # type: ignore[attr-defined]
    torch.testing.assert_close(x, x_ref)
    # and CIFAR-10's experience keeps CIFAR-10's
    first = SplitCIFAR10(root=root, class_order=list(range(10)), download=False).train_stream[0].dataset[0]
    torch.testing.assert_close(train[0].dataset[0][0], first[0])


def test_split_cifar110_seed_orders_only_cifar100(root: Path) -> None:
    streams = [SplitCIFAR110(root=root, num_experiences=3, seed=s).train_stream for s in (0, 0, 1)]
    classes = [[e.classes_in_this_experience for e in s] for s in streams]
    assert classes[0] == classes[1] != classes[2]
    assert all(c[0] == tuple(range(10)) for c in classes)
    assert all(sorted(c[1] + c[2]) == list(range(10, 110)) for c in classes)


@pytest.mark.parametrize(
    ("make", "tasks"),
    [
        (lambda r: SplitCIFAR10(root=r, task_labels=True, download=False), list(range(5))),
        (lambda r: SplitCIFAR100(root=r, num_experiences=4, task_labels=True, download=False), list(range(4))),
        (lambda r: SplitCIFAR110(root=r, num_experiences=5, task_labels=True, download=False), list(range(5))),
    ],
)
def test_task_labels(root: Path, make: Any, tasks: list[int]) -> None:
    dm = make(root)
    for stream in (dm.train_stream, dm.test_stream):
        assert [e.task_label for e in stream] == tasks
        for e in stream:
            assert e.dataset.task_labels.tolist() == [e.index] * len(e)
            assert int(e.dataset[0][2]) == e.index


def test_without_task_labels_samples_are_pairs(root: Path) -> None:
    dm = SplitCIFAR110(root=root, num_experiences=2, download=False)
    assert [e.task_label for e in dm.train_stream] == [0, 0]
    assert all(len(e.dataset[0]) == 2 for e in dm.train_stream)


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (SplitCIFAR10, ["CIFAR10"]),
        (SplitCIFAR100, ["CIFAR100"]),
        (SplitCIFAR110, ["CIFAR10"]),  # CIFAR-10 is read first
    ],
)
def test_missing_data_names_the_folder_and_files(tmp_path: Path, cls: Any, names: list[str]) -> None:
    dm = cls(root=tmp_path, download=False)
    dm.prepare_data()  # download=False: nothing to fetch, nothing to fail yet
    with pytest.raises(FileNotFoundError) as error:
        dm.train_stream
    message = str(error.value)
    dataset = getattr(torchvision.datasets, names[0])
    assert message.startswith(f"{names[0]}:")
    assert str(tmp_path / dataset.base_folder) in message
    assert all(name in message for name, _ in dataset.train_list + dataset.test_list)
    assert dataset.meta["filename"] in message


@pytest.mark.parametrize("cls", [SplitCIFAR10, SplitCIFAR100])
def test_offline_download_names_the_folder_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    dm = cls(root=tmp_path, download=True)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    dataset = CIFAR10 if cls is SplitCIFAR10 else CIFAR100
    message = str(error.value)
    assert message.startswith(f"{dataset.__name__}:")
    assert str(tmp_path / dataset.base_folder) in message and dataset.filename in message


def test_wrong_md5_is_reported_as_missing_data(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", "0" * 32]])
    with pytest.raises(FileNotFoundError, match="md5"):
        SplitCIFAR10(root=root, download=False).test_stream


@pytest.mark.parametrize(
    ("cls", "num_classes", "num_experiences"),
    [(SplitCIFAR10, 10, 5), (SplitCIFAR100, 100, 10), (SplitCIFAR110, 110, 11)],
)
def test_num_classes_known_before_loading(tmp_path: Path, cls: Any, num_classes: int, num_experiences: int) -> None:
    dm = cls(root=tmp_path / "nowhere", download=False)
    assert (dm.num_classes, dm.num_experiences) == (num_classes, num_experiences)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: SplitCIFAR10(num_experiences=3), ValueError, "`num_experiences`"),
        (lambda: SplitCIFAR10(class_order=[0, 1, 2]), ValueError, "`class_order`"),
        (lambda: SplitCIFAR100(num_experiences=0), ValueError, "`num_experiences`"),
        (lambda: SplitCIFAR100(class_order=NOT_A_SEQUENCE), TypeError, "`class_order`"),
        (lambda: SplitCIFAR110(num_experiences=1), ValueError, "`num_experiences`: expected an integer >= 2"),
        (lambda: SplitCIFAR110(num_experiences=4), ValueError, "1 \\+ a divisor"),
        (lambda: SplitCIFAR110(class_order=list(range(10, 110))), ValueError, "`class_order`"),
    ],
)
def test_bad_arguments(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()
