"""SplitFMNIST on the real Fashion-MNIST files: offline download path, md5, counts, normalisation, errors."""

from __future__ import annotations

import gzip
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_cl.benchmarks.fmnist import FMNIST_MEAN, FMNIST_STD, SplitFMNIST, download_fmnist, load_fmnist
from lightning_cl.core.data import InMemoryDataset
from tests.benchmarks import EXTRACTED_SIZES, RAW_FILES

PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def read_idx_gz(path: Path) -> np.ndarray:
    """An IDX(.gz) file as a uint8 array, read without torchvision (the data README's reader)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture
def offline() -> Iterator[list[object]]:
    """No network: every connection attempt is recorded and fails as it would on an offline machine."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield attempts


def stage(shared_data: Path, root: Path, names: list[str] | None = None) -> Path:
    """Copy the .gz archives (all of them, or ``names``) into ``root/FashionMNIST/raw``, writable."""
    src, dst = shared_data / "FashionMNIST" / "raw", root / "FashionMNIST" / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for gz in sorted(src.glob("*.gz")):
        if names is None or gz.name in names:
            shutil.copyfile(gz, dst / gz.name)
    return root


@pytest.fixture(scope="module")
def fashion_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four Fashion-MNIST archives, staged exactly as torchvision downloads them."""
    return stage(shared_data, tmp_path_factory.mktemp("fashion_gz"))


@pytest.fixture(scope="module")
def prepared(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SplitFMNIST]:
    """A private copy of the archives, prepared with download=True and no network."""
    root = tmp_path_factory.mktemp("split_fmnist")
    shutil.copytree(fashion_root / "FashionMNIST", root / "FashionMNIST")
    dm = SplitFMNIST(root=root, download=True, class_order=list(range(10)))
    with pytest.MonkeyPatch.context() as patch:
        attempts: list[object] = []
        patch.setattr(socket.socket, "connect", lambda *args: attempts.append(args))
        patch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: attempts.append(args))
        dm.prepare_data()
    assert attempts == []
    return root, dm


@pytest.mark.data
def test_prepare_data_checks_and_extracts_the_archives_offline(prepared: tuple[Path, SplitFMNIST]) -> None:
    root, _ = prepared
    raw = root / "FashionMNIST" / "raw"
    sizes = {name: (raw / name).stat().st_size for name in RAW_FILES}
    assert sizes == EXTRACTED_SIZES


@pytest.mark.data
def test_sizes_and_classes(prepared: tuple[Path, SplitFMNIST]) -> None:
    _, dm = prepared
    assert (dm.num_experiences, dm.num_classes) == (5, 10)
    assert [len(e) for e in dm.train_stream] == [12000] * 5
    assert [len(e) for e in dm.test_stream] == [2000] * 5
    assert [e.classes_in_this_experience for e in dm.train_stream] == PAIRS
    assert [e.classes_in_this_experience for e in dm.test_stream] == PAIRS


@pytest.mark.data
@pytest.mark.parametrize(("split", "per_class"), [("train", 6000), ("test", 1000)])
def test_experiences_hold_the_known_counts(prepared: tuple[Path, SplitFMNIST], split: str, per_class: int) -> None:
    _, dm = prepared
    stream = dm.train_stream if split == "train" else dm.test_stream
    counts = [torch.bincount(e.dataset.targets, minlength=10).tolist() for e in stream]  # type: ignore[attr-defined]
    assert counts == [[per_class if c in pair else 0 for c in range(10)] for pair in PAIRS]


@pytest.mark.data
@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_and_labels_are_the_files(prepared: tuple[Path, SplitFMNIST], shared_data: Path, split: str) -> None:
    _, dm = prepared
    prefix = "train" if split == "train" else "t10k"
    dataset = (dm.train_stream if split == "train" else dm.test_stream)[0].dataset
    assert isinstance(dataset, InMemoryDataset)
    raw = shared_data / "FashionMNIST" / "raw"
    images = read_idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz")
    assert dataset.inputs.dtype == torch.uint8
    assert torch.equal(dataset.inputs[:, 0], torch.from_numpy(images.copy()))
    assert dataset.indices is not None
    assert torch.equal(dataset.targets, torch.from_numpy(labels.astype(np.int64))[dataset.indices])


@pytest.mark.data
def test_normalised_pixels_have_zero_mean_unit_std(prepared: tuple[Path, SplitFMNIST]) -> None:
    _, dm = prepared
    datasets = [e.dataset for e in dm.train_stream]
    raw = datasets[0].inputs  # type: ignore[attr-defined]
    assert all(d.inputs is raw for d in datasets)  # type: ignore[attr-defined]
    assert raw.shape == (60000, 1, 28, 28)
    x = datasets[0].transform(raw)  # type: ignore[attr-defined]  # the whole train split in one batch
    std, mean = torch.std_mean(x)
    assert float(mean) == pytest.approx(0.0, abs=1e-3)
    assert float(std) == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(x, (raw.float() / 255 - FMNIST_MEAN) / FMNIST_STD)


@pytest.mark.data
def test_a_sample_is_the_row_of_its_batch(prepared: tuple[Path, SplitFMNIST]) -> None:
    _, dm = prepared
    dataset = dm.train_stream[2].dataset
    x, y = dataset.__getitems__([5, 7, 11]).tensors  # type: ignore[attr-defined]
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    x7, y7 = dataset[7]
    torch.testing.assert_close(x7, x[1], rtol=0, atol=0)
    assert int(y7) == int(y[1]) and int(y7) in (4, 5)


@pytest.mark.data
def test_task_labels(prepared: tuple[Path, SplitFMNIST]) -> None:
    root, _ = prepared
    dm = SplitFMNIST(root=root, download=False, task_labels=True, class_order=list(range(10)))
    assert [int(e.dataset[0][2]) for e in dm.train_stream] == [0, 1, 2, 3, 4]
    assert [e.task_label for e in dm.test_stream] == [0, 1, 2, 3, 4]


@pytest.mark.data
def test_the_seed_shuffles_the_class_order(prepared: tuple[Path, SplitFMNIST]) -> None:
    root, _ = prepared
    orders = [[e.classes_in_this_experience for e in SplitFMNIST(root, seed=s).train_stream] for s in (1, 1, 2)]
    assert orders[0] == orders[1] != orders[2]
    assert orders[0] != PAIRS


@pytest.mark.data
def test_a_corrupt_archive_fails_its_md5_check(shared_data: Path, tmp_path: Path, offline: list[object]) -> None:
    root = stage(shared_data, tmp_path)
    labels = root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[-10] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError) as error:
        download_fmnist(root)
    message = str(error.value)
    assert message.startswith("FashionMNIST:")
    assert str(root / "FashionMNIST" / "raw") in message
    assert "t10k-labels-idx1-ubyte.gz fails its md5 check (expected bb300cfdad3c16e7a12a480ee83cd310)" in message
    assert "train-images-idx3-ubyte.gz fails" not in message
    assert offline  # torchvision did try to fetch a good copy


@pytest.mark.data
def test_a_missing_archive_is_named(shared_data: Path, tmp_path: Path, offline: list[object]) -> None:
    root = stage(shared_data, tmp_path, ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])
    dm = SplitFMNIST(root=root, download=True)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "t10k-images-idx3-ubyte.gz is missing; t10k-labels-idx1-ubyte.gz is missing" in message
    assert "train-images-idx3-ubyte.gz is missing" not in message
    assert all(name in message for name in RAW_FILES)


def test_offline_with_no_files_names_the_data_set_folder_and_files(tmp_path: Path, offline: list[object]) -> None:
    dm = SplitFMNIST(root=tmp_path, download=True)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert message.startswith("FashionMNIST:")
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert all(f"{name}.gz is missing" in message for name in RAW_FILES)


def test_missing_data_names_the_folder_and_files(tmp_path: Path) -> None:
    dm = SplitFMNIST(root=tmp_path, download=False)
    dm.prepare_data()  # download=False: nothing to fetch, nothing to fail yet
    with pytest.raises(FileNotFoundError) as error:
        dm.train_stream
    message = str(error.value)
    assert message.startswith("FashionMNIST:")
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)
    with pytest.raises(FileNotFoundError, match="FashionMNIST"):
        load_fmnist(tmp_path, train=False)


def test_num_classes_and_experiences_are_known_before_loading(tmp_path: Path) -> None:
    dm = SplitFMNIST(root=tmp_path / "nowhere", num_experiences=2, download=False)
    assert (dm.num_classes, dm.num_experiences) == (10, 2)
    assert dm.hparams["num_experiences"] == 2
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 3}, ValueError, "`num_experiences`: 3 does not divide the 10 classes"),
        ({"num_experiences": 11}, ValueError, r"`num_experiences`: expected at most 10"),
        ({"num_experiences": 0}, ValueError, "`num_experiences`: expected a positive integer, got 0"),
        ({"num_experiences": 2.0}, ValueError, "`num_experiences`: expected a positive integer, got 2.0"),
        ({"class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]}, ValueError, r"unknown class ids \[10\]"),
        ({"class_order": [0, 0, 2, 3, 4, 5, 6, 7, 8, 9]}, ValueError, r"repeated class ids \[0\]"),
        ({"class_order": list(range(9))}, ValueError, r"missing class ids \[9\]"),
        ({"class_order": "0123456789"}, TypeError, "`class_order`: expected a sequence of class ids, got str"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SplitFMNIST(root=tmp_path, download=False, **kwargs)  # type: ignore[arg-type]
