"""SplitKMNIST on the real KMNIST test split (the train images are not in ../shared/data)."""

from __future__ import annotations

import gzip
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_cl.benchmarks.kmnist import KMNIST_MEAN, KMNIST_STD, SplitKMNIST, download_kmnist, load_kmnist
from tests.benchmarks import RAW_FILES


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


def stage_gz(shared_data: Path, root: Path) -> Path:
    """The three KMNIST archives of ../shared/data, copied as they are into ``root/KMNIST/raw``."""
    dst = root / "KMNIST" / "raw"
    dst.mkdir(parents=True)
    for gz in sorted((shared_data / "KMNIST" / "raw").glob("*.gz")):
        shutil.copyfile(gz, dst / gz.name)
    return root


def gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo)


@pytest.fixture(scope="module")
def kmnist_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The KMNIST test split extracted, with the empty train-images placeholder torchvision wants to see.

    Only ``train=False`` may be read from this folder: the train images are an empty file.
    """
    root = tmp_path_factory.mktemp("kmnist")
    src, dst = shared_data / "KMNIST" / "raw", root / "KMNIST" / "raw"
    dst.mkdir(parents=True)
    for gz in sorted(src.glob("*.gz")):
        gunzip(gz, dst / gz.name.removesuffix(".gz"))
    (dst / "train-images-idx3-ubyte").touch()
    return root


@pytest.fixture(scope="module")
def test_split_as_both(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KMNIST folder whose train files are copies of the test files.

    It lets the whole SplitKMNIST pipeline run on real KMNIST images without the train images,
    which are not available: both streams then hold the 10,000 test images.
    """
    root = tmp_path_factory.mktemp("kmnist_test_as_train")
    src, dst = shared_data / "KMNIST" / "raw", root / "KMNIST" / "raw"
    dst.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        gunzip(src / f"t10k-{kind}.gz", dst / f"t10k-{kind}")
        shutil.copyfile(dst / f"t10k-{kind}", dst / f"train-{kind}")
    return root


@pytest.mark.data
def test_test_split_sizes_and_counts(kmnist_root: Path) -> None:
    test = load_kmnist(kmnist_root, train=False)
    assert len(test) == 10000
    assert test.inputs.shape == (10000, 1, 28, 28)
    assert test.inputs.dtype == torch.uint8
    assert torch.bincount(test.targets).tolist() == [1000] * 10


@pytest.mark.data
def test_test_split_normalisation(kmnist_root: Path) -> None:
    test = load_kmnist(kmnist_root, train=False)
    assert test.transform is not None
    x = test.transform(test.inputs)  # the whole split in one batch
    torch.testing.assert_close(x, (test.inputs.float() / 255 - KMNIST_MEAN) / KMNIST_STD)
    # the constants are the train split's; the test split sits close to them, not on them
    std, mean = torch.std_mean(x)
    assert float(mean) == pytest.approx(0.0, abs=0.03)
    assert float(std) == pytest.approx(1.0, abs=0.03)
    raw_std, raw_mean = torch.std_mean(test.inputs.float() / 255)
    assert (round(float(raw_mean), 4), round(float(raw_std), 4)) == (0.1846, 0.3416)


@pytest.mark.data
def test_split_kmnist_pipeline(test_split_as_both: Path) -> None:
    dm = SplitKMNIST(root=test_split_as_both, download=False, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    pairs = [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]
    for stream in (dm.train_stream, dm.test_stream):
        assert [e.classes_in_this_experience for e in stream] == pairs
        assert [len(e) for e in stream] == [2000] * 5
    dataset = dm.test_stream[4].dataset
    x, y = dataset.__getitems__([0, 1999]).tensors  # type: ignore[attr-defined]
    assert set(y.tolist()) <= {0, 1}
    torch.testing.assert_close(dataset[1999][0], x[1], rtol=0, atol=0)
    source = load_kmnist(test_split_as_both, train=False)
    row = int(dataset.indices[1999])  # type: ignore[attr-defined]
    torch.testing.assert_close(x[1], (source.inputs[row].float() / 255 - KMNIST_MEAN) / KMNIST_STD)


@pytest.mark.data
def test_download_names_the_missing_train_images(shared_data: Path, tmp_path: Path, offline: list[object]) -> None:
    root = stage_gz(shared_data, tmp_path)
    dm = SplitKMNIST(root=root, download=True)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert message.startswith("KMNIST:")
    assert str(root / "KMNIST" / "raw") in message
    # the three staged archives pass their md5 check: only the absent one is named
    assert "(train-images-idx3-ubyte.gz is missing)" in message
    assert all(name in message for name in RAW_FILES)
    assert offline  # torchvision did try to fetch it


@pytest.mark.data
def test_download_checks_the_md5(shared_data: Path, tmp_path: Path, offline: list[object]) -> None:
    root = stage_gz(shared_data, tmp_path)
    labels = root / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-1])  # truncated
    with pytest.raises(FileNotFoundError) as error:
        download_kmnist(root)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte.gz fails its md5 check (expected 7320c461ea6c1c855c0b718fb2a4b134)" in message
    assert "t10k-images-idx3-ubyte.gz fails" not in message


def test_missing_data_names_the_folder_and_files(tmp_path: Path) -> None:
    dm = SplitKMNIST(root=tmp_path, download=False)
    dm.prepare_data()
    with pytest.raises(FileNotFoundError) as error:
        dm.test_stream
    message = str(error.value)
    assert message.startswith("KMNIST:")
    assert str(tmp_path / "KMNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)


def test_offline_with_no_files_names_every_file(tmp_path: Path, offline: list[object]) -> None:
    with pytest.raises(FileNotFoundError) as error:
        SplitKMNIST(root=tmp_path, download=True).prepare_data()
    assert all(f"{name}.gz is missing" in str(error.value) for name in RAW_FILES)


def test_num_classes_and_experiences_are_known_before_loading(tmp_path: Path) -> None:
    dm = SplitKMNIST(root=tmp_path / "nowhere", download=False)
    assert (dm.num_classes, dm.num_experiences) == (10, 5)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 4}, ValueError, "`num_experiences`: 4 does not divide the 10 classes"),
        ({"num_experiences": 20}, ValueError, r"`num_experiences`: expected at most 10"),
        ({"num_experiences": True}, ValueError, "`num_experiences`: expected a positive integer, got True"),
        ({"class_order": [-1, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, ValueError, r"unknown class ids \[-1\]"),
        ({"class_order": 7}, TypeError, "`class_order`: expected a sequence of class ids, got int"),
        ({"num_workers": -1}, ValueError, "`num_workers`"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SplitKMNIST(root=tmp_path, download=False, **kwargs)  # type: ignore[arg-type]
