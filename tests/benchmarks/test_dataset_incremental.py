"""dataset_incremental: one data set per experience, disjoint or shared label spaces."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks.dataset_incremental import dataset_incremental
from lightning_cl.core.data import InMemoryDataset, collate
from tests.conftest import TinyClassifier, quiet_trainer

# (train largest id + 1, test largest id + 1) per data set; the last test set has an id its
# train set lacks, which must still push the next offset
NUM_CLASSES = [(10, 10), (5, 5), (3, 4)]


class GenericDataset(Dataset):
    """A user's dataset: ``(input, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Any, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.x[i], int(self.y[i])


def make(num_classes: int, per_class: int, source: int, kind: str, width: int = 3) -> Dataset:
    """Row i of x is ``[source, i, y_i]`` (padded to ``width``): every sample can be traced back."""
    y = torch.arange(num_classes).repeat(per_class)
    x = torch.zeros(len(y), width)
    x[:, 0], x[:, 1], x[:, 2] = source, torch.arange(len(y)), y
    return InMemoryDataset(x, y) if kind == "tensor" else GenericDataset(x, y)


def family(kind: str) -> tuple[list[Dataset], list[Dataset]]:
    trains = [make(n, 2, k, kind) for k, (n, _) in enumerate(NUM_CLASSES)]
    tests = [make(n, 1, 10 + k, kind) for k, (_, n) in enumerate(NUM_CLASSES)]
    return trains, tests


def items(dataset: Dataset) -> list[Tensor]:
    return collate([dataset[i] for i in range(len(dataset))])  # type: ignore[arg-type]


KINDS = ["tensor", "generic"]


@pytest.mark.parametrize("kind", KINDS)
def test_disjoint_label_space_offsets_each_data_set(kind: str) -> None:
    trains, tests = family(kind)
    dm = dataset_incremental(trains, tests)

    offsets = [0, 10, 15]
    assert dm.num_experiences == 3 and dm.num_classes == 10 + 5 + 4
    for k, offset in enumerate(offsets):
        for stream, sources in ((dm.train_stream, trains), (dm.test_stream, tests)):
            x, y = items(stream[k].dataset)
            assert len(y) == len(sources[k])  # type: ignore[arg-type]
            assert torch.equal(x[:, 1], torch.arange(len(y)).float())  # every sample, in order
            assert set(x[:, 0].tolist()) == {k if stream is dm.train_stream else 10 + k}
            assert torch.equal(y, x[:, 2].long() + offset)
            assert stream[k].classes_in_this_experience == tuple(torch.unique(y).tolist())
    assert dm.train_stream[2].classes_in_this_experience == (15, 16, 17)
    assert dm.test_stream[2].classes_in_this_experience == (15, 16, 17, 18)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_label_space_keeps_ids_and_task_labels_name_the_data_set(kind: str) -> None:
    trains, tests = family(kind)
    dm = dataset_incremental(trains, tests, label_space="shared", task_labels=True)

    assert dm.num_classes == 10
    for k in range(3):
        for stream in (dm.train_stream, dm.test_stream):
            x, y, t = items(stream[k].dataset)
            assert torch.equal(y, x[:, 2].long())
            assert set(t.tolist()) == {k}
            assert stream[k].task_label == k


def test_in_memory_inputs_keep_the_fast_path() -> None:
    trains, tests = family("tensor")
    dm = dataset_incremental(trains, tests, task_labels=True)
    for k, experience in enumerate(dm.train_stream):
        assert isinstance(experience.dataset, InMemoryDataset)
        assert experience.dataset.inputs is trains[k].inputs  # type: ignore[attr-defined]


def test_inputs_of_different_shapes_name_the_data_sets() -> None:
    trains, tests = family("tensor")
    trains[1] = make(5, 2, 1, "tensor", width=4)
    with pytest.raises(ValueError, match=r"train_datasets\[0\] \(InMemoryDataset\): \(3,\).*train_datasets\[1\] "):
        dataset_incremental(trains, tests)


def test_image_inputs_of_different_sizes_are_an_error() -> None:
    small = GenericDataset([Image.new("L", (28, 28))] * 2, torch.tensor([0, 1]))
    large = GenericDataset([Image.new("RGB", (32, 32))] * 2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(GenericDataset\): \(28, 28\).*\(GenericDataset\): \(32, 32, 3\)"):
        dataset_incremental([small, large], [small, large])


def test_trains_with_a_real_trainer() -> None:
    g = torch.Generator().manual_seed(0)
    parts = []
    for _ in range(2):
        centers = torch.randn(3, 8, generator=g) * 3
        y = torch.arange(3).repeat(30)
        parts.append(InMemoryDataset(centers[y] + torch.randn(len(y), 8, generator=g), y))
    dm = dataset_incremental(parts, parts, batch_size=16)
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=dm.num_classes))

    result = fit_stream(quiet_trainer(max_epochs=3), model, dm)

    assert result.accuracy_matrix.shape == (2, 2)
    assert result.accuracy_matrix[1, 1] > 0.9


@pytest.mark.parametrize(
    ("trains", "tests", "kwargs", "error", "match"),
    [
        ("one", "one", {}, TypeError, "`train_datasets`: expected a sequence of datasets"),
        ("none", "none", {}, ValueError, "`train_datasets`: expected at least one dataset"),
        ("strings", "strings", {}, TypeError, r"`train_datasets\[0\]`: expected a map-style dataset, got str"),
        ("pair", "single", {}, ValueError, r"`test_datasets`: expected one test set per train set \(2\), got 1"),
        ("pair", "pair", {"label_space": "joint"}, ValueError, "`label_space`: expected one of"),
        ("empty", "pair", {}, ValueError, r"`train_datasets\[1\]` \(InMemoryDataset\) is empty"),
        ("negative", "pair", {}, ValueError, r"`train_datasets\[1\]`: expected class ids >= 0"),
    ],
)
def test_bad_inputs(trains: str, tests: str, kwargs: dict, error: type[Exception], match: str) -> None:
    a, b = make(2, 2, 0, "tensor"), make(2, 2, 1, "tensor")
    named = {
        "one": a,
        "none": [],
        "strings": ["a"],
        "pair": [a, b],
        "single": [a],
        "empty": [a, InMemoryDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))],
        "negative": [a, InMemoryDataset(torch.zeros(2, 3), torch.tensor([0, -1]))],
    }
    with pytest.raises(error, match=match):
        dataset_incremental(named[trains], named[tests], **kwargs)
