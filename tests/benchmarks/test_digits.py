"""SplitDigits: the embedded 8x8 digits, their fixed split and their class-incremental stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_cl.benchmarks import SplitDigits
from lightning_cl.benchmarks.digits import load_digits
from lightning_cl.core.data import InMemoryDataset, collate
from lightning_cl.core.experience import Stream

CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def digits() -> SplitDigits:
    return SplitDigits(num_experiences=5, class_order=list(range(10)))


def whole(stream: Stream) -> list[Tensor]:
    """Every sample of a stream, batched: one ``__getitems__`` per experience."""
    batches = [collate(e.dataset.__getitems__(list(range(len(e))))) for e in stream]
    return [torch.cat(column) for column in zip(*batches)]


def source_rows(stream: Stream) -> list[int]:
    """Positions in ``load_digits()`` of the samples of a stream."""
    datasets = [e.dataset for e in stream]
    assert all(isinstance(d, InMemoryDataset) and d.indices is not None for d in datasets)
    return sorted(torch.cat([d.indices for d in datasets]).tolist())  # type: ignore[union-attr]


def test_load_digits() -> None:
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8)
    assert images.dtype == torch.uint8
    assert (int(images.min()), int(images.max())) == (0, 16)
    assert labels.dtype == torch.long
    assert torch.bincount(labels).tolist() == CLASS_COUNTS


def test_sizes(digits: SplitDigits) -> None:
    assert digits.num_experiences == 5
    assert digits.num_classes == 10
    assert sum(len(e) for e in digits.train_stream) == 1347
    assert sum(len(e) for e in digits.test_stream) == 450
    assert [e.classes_in_this_experience for e in digits.train_stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_split_is_stratified(digits: SplitDigits) -> None:
    test_counts = torch.bincount(whole(digits.test_stream)[1], minlength=10).tolist()
    train_counts = torch.bincount(whole(digits.train_stream)[1], minlength=10).tolist()
    assert [a + b for a, b in zip(train_counts, test_counts)] == CLASS_COUNTS
    # a quarter of each class, rounded
    assert all(abs(t - n / 4) <= 0.5 for t, n in zip(test_counts, CLASS_COUNTS))


def test_inputs_are_scaled_to_unit_range(digits: SplitDigits) -> None:
    x = whole(digits.train_stream)[0]
    assert x.shape == (1347, 1, 8, 8)
    assert x.dtype == torch.float32
    assert (float(x.min()), float(x.max())) == (0.0, 1.0)
    assert digits.train_stream[0].dataset[0][0].shape == (1, 8, 8)
    # uint8 values 0..16, divided by 16
    assert torch.equal(x * 16, (x * 16).round())


def test_train_and_test_partition_the_data(digits: SplitDigits) -> None:
    train, test = source_rows(digits.train_stream), source_rows(digits.test_stream)
    assert len(set(train)) == 1347
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(1797))


def test_split_does_not_depend_on_the_seed(digits: SplitDigits) -> None:
    other = SplitDigits(num_experiences=5, seed=1)
    # the seed does change the class order, so the split staying put is not a coincidence
    assert [e.classes_in_this_experience for e in other.train_stream] != [
        e.classes_in_this_experience for e in digits.train_stream
    ]
    assert source_rows(other.train_stream) == source_rows(digits.train_stream)
    assert source_rows(other.test_stream) == source_rows(digits.test_stream)


def test_bad_num_experiences_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="`num_experiences`: 3 does not divide the 10 classes"):
        SplitDigits(num_experiences=3)


def test_matches_scikit_learn() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    reference = sklearn_datasets.load_digits()
    images, labels = load_digits()
    np.testing.assert_array_equal(images.squeeze(1).numpy(), reference.images)
    np.testing.assert_array_equal(labels.numpy(), reference.target)
