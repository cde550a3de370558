"""Stream generators: class_incremental, task_incremental, domain_incremental, from_tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_cl.benchmarks import class_incremental, domain_incremental, from_tensors, task_incremental
from lightning_cl.core.data import InMemoryDataset, SubsetDataset, collate
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Stream
from tests.conftest import make_tensor_stream

NUM_CLASSES = 6
ORDER = [4, 0, 5, 2, 1, 3]


class GenericDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def labelled_data(per_class: int, seed: int, exclude: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """Shuffled labels; row i of x is ``[i, y_i]`` so every sample can be traced back."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(NUM_CLASSES).repeat(per_class)
    y = y[torch.randperm(len(y), generator=g)]
    y = y[~torch.isin(y, torch.tensor(exclude, dtype=torch.long))]
    x = torch.stack([torch.arange(len(y)), y], dim=1).float()
    return x, y


def datasets(kind: str, exclude_from_test: tuple[int, ...] = ()) -> tuple[Dataset, Dataset]:
    train, test = labelled_data(5, seed=0), labelled_data(3, seed=1, exclude=exclude_from_test)
    wrap = InMemoryDataset if kind == "tensor" else GenericDataset
    return wrap(*train), wrap(*test)


def all_items(dataset: Dataset) -> list[Tensor]:
    return collate([dataset[i] for i in range(len(dataset))])  # type: ignore[arg-type]


def streams(dm: StreamDataModule) -> list[tuple[str, Stream]]:
    return [("train", dm.train_stream), ("test", dm.test_stream)]


KINDS = ["tensor", "generic"]


# ------------------------------------------------------------------------------ class groups
@pytest.mark.parametrize("kind", KINDS)
def test_experiences_follow_class_order(kind: str) -> None:
    train, test = datasets(kind)
    dm = class_incremental(train, test, num_experiences=3, class_order=ORDER)

    assert dm.num_experiences == 3
    assert dm.num_classes == NUM_CLASSES
    for _, stream in streams(dm):
        assert [e.classes_in_this_experience for e in stream] == [(0, 4), (2, 5), (1, 3)]
        assert [set(all_items(e.dataset)[1].tolist()) for e in stream] == [{0, 4}, {2, 5}, {1, 3}]
        assert [e.task_label for e in stream] == [0, 0, 0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("generator", [class_incremental, task_incremental])
def test_every_sample_lands_in_exactly_one_experience(kind: str, generator: Callable[..., StreamDataModule]) -> None:
    train, test = datasets(kind)
    dm = generator(train, test, num_experiences=3, class_order=ORDER)

    for name, stream in streams(dm):
        source = train if name == "train" else test
        origin = torch.cat([all_items(e.dataset)[0][:, 0] for e in stream]).long()
        assert sorted(origin.tolist()) == list(range(len(source)))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_samples_keep_their_inputs_and_classes(kind: str) -> None:
    train, test = datasets(kind)
    dm = class_incremental(train, test, num_experiences=3, class_order=ORDER)

    for _, stream in streams(dm):
        for experience in stream:
            x, y = all_items(experience.dataset)
            # column 1 of x is the original label: global ids are kept
            assert y.tolist() == x[:, 1].long().tolist()


def class_sequence(seed: int) -> list[int]:
    train, test = datasets("tensor")
    dm = class_incremental(train, test, num_experiences=NUM_CLASSES, seed=seed)
    return [e.classes_in_this_experience[0] for e in dm.train_stream]


def test_default_class_order_is_a_seeded_shuffle() -> None:
    assert class_sequence(seed=0) == class_sequence(seed=0)
    assert sorted(class_sequence(seed=0)) == list(range(NUM_CLASSES))
    assert class_sequence(seed=0) != class_sequence(seed=1)


def test_seeded_order_is_the_same_for_both_streams() -> None:
    train, test = datasets("tensor")
    dm = class_incremental(train, test, num_experiences=3, seed=7)
    assert [e.classes_in_this_experience for e in dm.train_stream] == [
        e.classes_in_this_experience for e in dm.test_stream
    ]


@pytest.mark.parametrize(
    ("kwargs", "groups"),
    [
        (dict(classes_per_experience=2), [(0, 4), (2, 5), (1, 3)]),
        (dict(classes_per_experience=3), [(0, 4, 5), (1, 2, 3)]),
        (dict(classes_per_experience=[1, 3, 2]), [(4,), (0, 2, 5), (1, 3)]),
        (dict(classes_per_experience=[1, 3, 2], num_experiences=3), [(4,), (0, 2, 5), (1, 3)]),
    ],
    ids=["int-2", "int-3", "uneven-list", "uneven-list-with-num-experiences"],
)
def test_classes_per_experience(kwargs: dict[str, Any], groups: list[tuple[int, ...]]) -> None:
    train, test = datasets("tensor")
    dm = class_incremental(train, test, class_order=ORDER, **kwargs)

    assert [e.classes_in_this_experience for e in dm.train_stream] == groups
    assert [e.classes_in_this_experience for e in dm.test_stream] == groups
    # 5 train samples per class
    assert [len(e) for e in dm.train_stream] == [5 * len(g) for g in groups]


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_experiences=4), r"`num_experiences`: 4 does not divide the 6 classes evenly"),
        (dict(num_experiences=7), r"`num_experiences`: expected at most 6 \(the number of classes\), got 7"),
        (dict(num_experiences=0), r"`num_experiences`: expected a positive integer, got 0"),
        (dict(), r"`num_experiences`: give it or `classes_per_experience`; got neither"),
        (dict(classes_per_experience=4), r"`classes_per_experience`: expected a positive divisor of the 6 classes"),
        (dict(classes_per_experience=[2, 2, 1]), r"`classes_per_experience`: expected positive sizes summing to 6"),
        (dict(classes_per_experience=[3, 3], num_experiences=3), r"`num_experiences`: 3 disagrees"),
        (
            dict(num_experiences=2, class_order=[0, 1, 2, 3, 4, 9]),
            r"`class_order`: expected a permutation .* \(unknown class ids \[9\]; missing class ids \[5\]\)",
        ),
        (dict(num_experiences=2, class_order=[0, 1, 2, 3, 4]), r"`class_order`: .*\(missing class ids \[5\]\)"),
        (
            dict(num_experiences=2, class_order=[0, 1, 2, 3, 4, 5, 3]),
            r"`class_order`: .*\(repeated class ids \[3\]\)",
        ),
    ],
    ids=[
        "not-a-divisor",
        "more-experiences-than-classes",
        "zero-experiences",
        "neither",
        "classes-per-experience-not-a-divisor",
        "sizes-do-not-sum",
        "sizes-disagree-with-num-experiences",
        "unknown-class",
        "missing-class",
        "repeated-class",
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    train, test = datasets("tensor")
    with pytest.raises(ValueError, match=match):
        class_incremental(train, test, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_test_set_missing_classes_gives_an_empty_experience_error(kind: str) -> None:
    train, test = datasets(kind, exclude_from_test=(2, 5))
    with pytest.raises(
        ValueError, match=r"`experiences` of the test stream: experience 1 \(classes \[2, 5\]\) is empty"
    ):
        class_incremental(train, test, num_experiences=3, class_order=ORDER)


# ------------------------------------------------------------------------------- task labels
# class_order [4, 0 | 5, 2 | 1, 3]: ids counted from 0 in order of arrival within each task
LOCAL_ID = {4: 0, 0: 1, 5: 0, 2: 1, 1: 0, 3: 1}
TASK_OF = {4: 0, 0: 0, 5: 1, 2: 1, 1: 2, 3: 2}


@pytest.mark.parametrize("kind", KINDS)
def test_task_incremental_counts_classes_from_zero_per_task(kind: str) -> None:
    train, test = datasets(kind)
    dm = task_incremental(train, test, num_experiences=3, class_order=ORDER)

    for _, stream in streams(dm):
        assert [e.task_label for e in stream] == [0, 1, 2]
        assert [e.classes_in_this_experience for e in stream] == [(0, 1), (0, 1), (0, 1)]
        for experience in stream:
            x, y, t = all_items(experience.dataset)
            original = x[:, 1].long().tolist()
            assert y.tolist() == [LOCAL_ID[c] for c in original]
            assert t.tolist() == [TASK_OF[c] for c in original]
            assert set(t.tolist()) == {experience.index}


@pytest.mark.parametrize("kind", KINDS)
def test_class_incremental_with_task_labels_keeps_global_ids(kind: str) -> None:
    train, test = datasets(kind)
    dm = class_incremental(train, test, num_experiences=3, class_order=ORDER, task_labels=True)

    for _, stream in streams(dm):
        assert [e.task_label for e in stream] == [0, 1, 2]
        assert [e.classes_in_this_experience for e in stream] == [(0, 4), (2, 5), (1, 3)]
        for experience in stream:
            x, y, t = all_items(experience.dataset)
            assert y.tolist() == x[:, 1].long().tolist()
            assert t.tolist() == [experience.index] * len(y)


def test_class_incremental_does_not_touch_the_source_labels() -> None:
    train, test = datasets("tensor")
    before = train.targets.clone()  # type: ignore[attr-defined]
    task_incremental(train, test, num_experiences=3, class_order=ORDER)
    assert torch.equal(train.targets, before)  # type: ignore[attr-defined]


# -------------------------------------------------------------------------- dataset types
@pytest.mark.parametrize(
    ("kind", "expected"), [("tensor", InMemoryDataset), ("generic", SubsetDataset)], ids=["tensor", "generic"]
)
@pytest.mark.parametrize("generator", [class_incremental, task_incremental])
def test_experience_dataset_type(
    kind: str, expected: type[Dataset], generator: Callable[..., StreamDataModule]
) -> None:
    train, test = datasets(kind)
    dm = generator(train, test, num_experiences=3, class_order=ORDER)
    for _, stream in streams(dm):
        assert all(type(e.dataset) is expected for e in stream)


def test_tensor_fast_path_shares_the_input_storage() -> None:
    train, test = datasets("tensor")
    dm = class_incremental(train, test, num_experiences=3, class_order=ORDER)
    assert all(e.dataset.inputs is train.inputs for e in dm.train_stream)  # type: ignore[attr-defined]
    assert all(e.dataset.inputs is test.inputs for e in dm.test_stream)  # type: ignore[attr-defined]


def test_from_tensors_keeps_the_fast_path() -> None:
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(60, 5, generator=g), torch.arange(60) % 6
    x_test, y_test = torch.randn(30, 5, generator=g), torch.arange(30) % 6
    dm = from_tensors(x_train, y_train, x_test, y_test, num_experiences=3, class_order=ORDER, transform=lambda b: b * 2)

    assert [e.classes_in_this_experience for e in dm.train_stream] == [(0, 4), (2, 5), (1, 3)]
    assert [len(e) for e in dm.train_stream] == [20, 20, 20]
    assert [len(e) for e in dm.test_stream] == [10, 10, 10]
    first = dm.train_stream[0].dataset
    assert isinstance(first, InMemoryDataset)
    assert first.inputs is x_train
    x, y = collate(first.__getitems__([0, 1]))
    torch.testing.assert_close(x, x_train[first.indices[:2]] * 2, rtol=0, atol=0)
    assert set(y.tolist()) <= {0, 4}


def test_make_tensor_stream_helper_is_a_tensor_stream() -> None:
    dm = make_tensor_stream(num_experiences=3)
    assert [e.classes_in_this_experience for e in dm.train_stream] == [(0, 1), (2, 3), (4, 5)]
    assert all(isinstance(e.dataset, InMemoryDataset) for e in dm.train_stream)


# ---------------------------------------------------------------------------- domain shifts
class Recorder:
    """A transform that remembers the shape of every input it gets."""

    def __init__(self, shift: float) -> None:
        self.shift = shift
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return x + self.shift


@pytest.mark.parametrize("task_labels", [False, True])
def test_domain_incremental_transforms_whole_batches_on_tensors(task_labels: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g), torch.arange(10) % 5
    data = InMemoryDataset(x, y, transform=lambda b: b * 10)
    transforms = [Recorder(0.0), Recorder(1.0)]
    dm = domain_incremental(data, data, transforms, task_labels=task_labels)

    assert dm.num_experiences == 2
    for _, stream in streams(dm):
        assert [e.classes_in_this_experience for e in stream] == [(0, 1, 2, 3, 4)] * 2
        assert [e.task_label for e in stream] == ([0, 1] if task_labels else [0, 0])
        assert all(isinstance(e.dataset, InMemoryDataset) and len(e) == 10 for e in stream)

    batches = list(DataLoader(dm.train_stream[1].dataset, batch_size=4, collate_fn=collate))
    # one call per batch, on the whole batch, after the dataset's own transform
    assert transforms[1].shapes == [(4, 3), (4, 3), (2, 3)]
    assert transforms[0].shapes == []
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x * 10 + 1.0, rtol=0, atol=0)
    assert torch.cat([b[1] for b in batches]).tolist() == y.tolist()
    if task_labels:
        assert torch.cat([b[2] for b in batches]).tolist() == [1] * 10
    else:
        assert len(batches[0]) == 2


def test_domain_incremental_transforms_single_samples_on_a_generic_dataset() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g), torch.arange(6) % 3
    data = GenericDataset(x, y)
    transforms = [Recorder(0.0), Recorder(-2.0)]
    dm = domain_incremental(data, data, transforms, task_labels=True)

    experience = dm.test_stream[1]
    assert isinstance(experience.dataset, SubsetDataset)
    xb, yb, tb = next(iter(DataLoader(experience.dataset, batch_size=6, collate_fn=collate)))
    assert transforms[1].shapes == [(3,)] * 6
    torch.testing.assert_close(xb, x - 2.0, rtol=0, atol=0)
    assert yb.tolist() == y.tolist()
    assert tb.tolist() == [1] * 6


@pytest.mark.parametrize(
    ("transforms", "error", "match"),
    [
        ([], ValueError, r"`transforms`: expected a non-empty sequence of callables"),
        (None, ValueError, r"`transforms`: expected a non-empty sequence of callables, got None"),
        ([lambda x: x, 3], TypeError, r"`transforms\[1\]`: expected a callable, got int"),
    ],
    ids=["empty", "none", "not-callable"],
)
def test_domain_incremental_rejects_bad_transforms(transforms: Any, error: type[Exception], match: str) -> None:
    data = InMemoryDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(error, match=match):
        domain_incremental(data, data, transforms)


def test_negative_class_ids_are_refused() -> None:
    ds = InMemoryDataset(torch.randn(8, 2), torch.tensor([-1, 0, 1, 2] * 2))
    with pytest.raises(ValueError, match="expected class ids >= 0"):
        class_incremental(ds, ds, num_experiences=2, class_order=[-1, 2, 0, 1])
