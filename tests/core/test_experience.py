"""Experience and Stream: the sequence protocol and the class bookkeeping of a stream."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.experience import Experience, Stream

# item i has class LABELS[i]
LABELS = [0, 1, 0, 2, 3, 2, 1, 4, 5, 5]
CLASS_GROUPS = [(0, 1), (2, 3), (1, 4, 5)]  # class 1 comes back in the last experience
ITEMS = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def dataset() -> InMemoryDataset:
    return InMemoryDataset(torch.arange(20.0).view(10, 2), torch.tensor(LABELS))


def experiences() -> list[Experience]:
    ds = dataset()
    return [Experience(k, ds.subset(items), classes) for k, (items, classes) in enumerate(zip(ITEMS, CLASS_GROUPS))]


@pytest.fixture
def stream() -> Stream:
    return Stream(experiences(), name="train")


def test_sequence_protocol(stream: Stream) -> None:
    assert len(stream) == 3
    assert [len(e) for e in stream] == [3, 3, 4]
    assert [e.index for e in stream] == [0, 1, 2]
    assert stream[1].classes_in_this_experience == (2, 3)
    assert stream[-1] is stream[2]
    assert list(stream) == [stream[0], stream[1], stream[2]]
    assert repr(stream) == "Stream(name='train', num_experiences=3)"


def test_slicing(stream: Stream) -> None:
    tail = stream[1:]
    assert len(tail) == 2
    assert [e.index for e in tail] == [1, 2]
    assert [e.index for e in stream[::2]] == [0, 2]
    assert len(stream[3:]) == 0


def test_getitem_out_of_range(stream: Stream) -> None:
    with pytest.raises(IndexError):
        stream[3]


@pytest.mark.parametrize(
    ("index", "previous", "seen", "future"),
    [
        # before 0: nothing; up to 0: {0, 1}; after: {2, 3} U {1, 4, 5} minus {0, 1}
        (0, (), (0, 1), (2, 3, 4, 5)),
        # before 1: {0, 1}; up to 1: {0, 1, 2, 3}; after: {1, 4, 5} minus {0, 1, 2, 3}
        (1, (0, 1), (0, 1, 2, 3), (4, 5)),
        # before 2: {0, 1, 2, 3}; up to 2: everything; after: nothing
        (2, (0, 1, 2, 3), (0, 1, 2, 3, 4, 5), ()),
    ],
)
def test_class_bookkeeping(
    stream: Stream, index: int, previous: tuple[int, ...], seen: tuple[int, ...], future: tuple[int, ...]
) -> None:
    assert stream.previous_classes(index) == previous
    assert stream.classes_seen_so_far(index) == seen
    assert stream.future_classes(index) == future


def test_all_classes(stream: Stream) -> None:
    assert stream.classes == (0, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("method", ["previous_classes", "classes_seen_so_far", "future_classes"])
@pytest.mark.parametrize("index", [-1, 3])
def test_class_queries_reject_an_index_out_of_range(stream: Stream, method: str, index: int) -> None:
    with pytest.raises(IndexError, match=rf"`index`: expected 0 <= index < 3 in the train stream, got {index}"):
        getattr(stream, method)(index)


def test_empty_experience_is_rejected() -> None:
    exps = experiences()
    exps[1] = Experience(1, dataset().subset([]), (2, 3))
    with pytest.raises(
        ValueError, match=r"`experiences` of the test stream: experience 1 \(classes \[2, 3\]\) is empty"
    ):
        Stream(exps, name="test")


def test_experience_with_the_wrong_index_is_rejected() -> None:
    exps = experiences()
    exps[2] = dataclasses.replace(exps[2], index=5)
    with pytest.raises(
        ValueError, match="`experiences` of the train stream: expected experience 2 to have index 2, got index 5"
    ):
        Stream(exps, name="train")


def test_experience_is_frozen() -> None:
    experience = experiences()[0]
    assert experience.task_label == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        experience.index = 1  # type: ignore[misc]
