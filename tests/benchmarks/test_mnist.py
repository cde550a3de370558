"""SplitMNIST on the real MNIST files: offline preparation, exact counts, normalisation, errors."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch

from lightning_cl.benchmarks import SplitMNIST
from lightning_cl.core.data import InMemoryDataset
from tests.benchmarks import EXTRACTED_SIZES, RAW_FILES

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("SplitMNIST.prepare_data opened a network connection")


@pytest.fixture(scope="module")
def prepared(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SplitMNIST]:
    """A private copy of the staged .gz archives, prepared with download=True and no network."""
    root = tmp_path_factory.mktemp("split_mnist")
    shutil.copytree(mnist_root / "MNIST" / "raw", root / "MNIST" / "raw")
    dm = SplitMNIST(root=root, download=True, class_order=list(range(10)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        dm.prepare_data()
    return root, dm


@pytest.mark.data
def test_prepare_data_extracts_the_archives_offline(prepared: tuple[Path, SplitMNIST]) -> None:
    root, _ = prepared
    raw = root / "MNIST" / "raw"
    sizes = {name: (raw / name).stat().st_size for name in RAW_FILES}
    assert sizes == EXTRACTED_SIZES


@pytest.mark.data
def test_sizes_and_classes(prepared: tuple[Path, SplitMNIST]) -> None:
    _, dm = prepared
    assert dm.num_experiences == 5
    assert dm.num_classes == 10
    assert sum(len(e) for e in dm.train_stream) == 60000
    assert sum(len(e) for e in dm.test_stream) == 10000
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [e.classes_in_this_experience for e in dm.train_stream] == pairs
    assert [e.classes_in_this_experience for e in dm.test_stream] == pairs


@pytest.mark.data
@pytest.mark.parametrize(("split", "counts"), [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_experiences_hold_the_known_counts(prepared: tuple[Path, SplitMNIST], split: str, counts: list[int]) -> None:
    _, dm = prepared
    stream = dm.train_stream if split == "train" else dm.test_stream
    per_experience = [torch.bincount(e.dataset.targets, minlength=10).tolist() for e in stream]  # type: ignore[attr-defined]
    expected = [[counts[c] if c in (2 * k, 2 * k + 1) else 0 for c in range(10)] for k in range(5)]
    assert per_experience == expected


@pytest.mark.data
def test_normalised_pixels_have_zero_mean_unit_std(prepared: tuple[Path, SplitMNIST]) -> None:
    _, dm = prepared
    datasets = [e.dataset for e in dm.train_stream]
    assert all(isinstance(d, InMemoryDataset) for d in datasets)
    # every experience indexes the same uint8 tensor of the whole train split
    raw = datasets[0].inputs  # type: ignore[attr-defined]
    assert all(d.inputs is raw for d in datasets)  # type: ignore[attr-defined]
    assert raw.shape == (60000, 1, 28, 28)
    assert raw.dtype == torch.uint8

    x = datasets[0].transform(raw)  # type: ignore[attr-defined]
    std, mean = torch.std_mean(x)
    assert float(mean) == pytest.approx(0.0, abs=0.01)
    assert float(std) == pytest.approx(1.0, abs=0.01)
    assert datasets[0][0][0].shape == (1, 28, 28)


def test_missing_data_names_the_folder_and_files(tmp_path: Path) -> None:
    dm = SplitMNIST(root=tmp_path, download=False)
    dm.prepare_data()  # download=False: nothing to fetch, nothing to fail yet
    with pytest.raises(FileNotFoundError) as error:
        dm.train_stream
    message = str(error.value)
    assert message.startswith("MNIST:")
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)


def test_num_classes_and_experiences_are_known_before_loading(tmp_path: Path) -> None:
    dm = SplitMNIST(root=tmp_path / "nowhere", num_experiences=2, download=False)
    assert dm.num_classes == 10
    assert dm.num_experiences == 2
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.data
def test_permuted_mnist_permutes_every_experience(prepared: tuple[Path, SplitMNIST]) -> None:
    from lightning_cl.benchmarks import PermutedMNIST

    root, split = prepared
    dm = PermutedMNIST(root=root, num_experiences=3, seed=1, download=False)
    assert (dm.num_experiences, dm.num_classes) == (3, 10)
    permutations = dm.permutations()
    assert all(not torch.equal(permutations[0], p) for p in permutations[1:])
    assert all(torch.equal(a, b) for a, b in zip(permutations, PermutedMNIST(root=root, seed=1).permutations()))
    plain = split.train_stream[0].dataset  # classes 0, 1 of the unpermuted data
    index = plain.indices[:5]
    x_plain = InMemoryDataset(plain.inputs, torch.zeros(len(plain.inputs), dtype=torch.long), transform=plain.transform)
    reference = x_plain.__getitems__(index.tolist()).tensors[0].reshape(5, -1)
    for k, experience in enumerate(dm.train_stream):
        assert len(experience) == 60000 and experience.classes_in_this_experience == tuple(range(10))
        x, _ = experience.dataset.__getitems__(index.tolist()).tensors
        torch.testing.assert_close(x.reshape(5, -1), reference[:, permutations[k]])
        x0, _ = experience.dataset[int(index[0])]
        torch.testing.assert_close(x0, x[0])
    assert [len(e) for e in dm.test_stream] == [10000] * 3
