"""blurry: each class has a main experience and leaks into the others, by an exact rule."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks.blurry import blurry
from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.online import online
from lightning_cl.core.data import InMemoryDataset, collate
from tests.conftest import TinyClassifier, quiet_trainer


class GenericDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def data(num_classes: int, per_class: int, kind: str = "tensor", seed: int = 0) -> Dataset:
    """Shuffled labels; row i of x is ``[i, y_i]``."""
    y = torch.arange(num_classes).repeat(per_class)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    x = torch.stack([torch.arange(len(y)), y], dim=1).float()
    return InMemoryDataset(x, y) if kind == "tensor" else GenericDataset(x, y)


def items(dataset: Dataset) -> list[Tensor]:
    return collate([dataset[i] for i in range(len(dataset))])  # type: ignore[arg-type]


def counts(dm, num_classes: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """counts[k][c]: samples of class c in train experience k."""
    return [torch.bincount(items(e.dataset)[1], minlength=num_classes).tolist() for e in dm.train_stream]


@pytest.mark.parametrize("kind", ["tensor", "generic"])
def test_every_train_sample_lands_in_exactly_one_experience(kind: str) -> None:
    train = data(8, 30, kind)
    dm = blurry(train, data(8, 5, kind, seed=1), num_experiences=4, blurry_ratio=0.3, spread_decay=0.5)

    parts = [items(e.dataset) for e in dm.train_stream]
    assert sorted(torch.cat([x[:, 0] for x, _ in parts]).long().tolist()) == list(range(len(train)))  # type: ignore[arg-type]
    for (x, y), experience in zip(parts, dm.train_stream):
        assert torch.equal(y, x[:, 1].long())
        assert experience.classes_in_this_experience == tuple(torch.unique(y).tolist())


def test_uniform_spread_matches_the_hand_computed_counts() -> None:
    # 4 classes x 100, 2 experiences, 20% leaks: main 80, the other experience 20
    dm = blurry(data(4, 100), data(4, 10), num_experiences=2, class_order=[0, 1, 2, 3], blurry_ratio=0.2)
    assert counts(dm, 4) == [[80, 80, 20, 20], [20, 20, 80, 80]]


def test_decaying_spread_matches_the_hand_computed_counts() -> None:
    # class 0 (main experience 0) leaks round(0.2 x 30) = 6 samples with weights 0.5, 0.25, 0.125
    # to experiences 1, 2, 3: shares 3.43, 1.71, 0.86 -> floors 3, 1, 0 and the 2 left over go to
    # the largest remainders (0.86, 0.71): 3, 2, 1. Class 2 (main 1): weights 0.5, 0.5, 0.25 to
    # experiences 0, 2, 3: shares 2.4, 2.4, 1.2 -> 2, 2, 1 and one more to the first tie: 3, 2, 1.
    dm = blurry(data(8, 30), data(8, 2), num_experiences=4, class_order=range(8), blurry_ratio=0.2, spread_decay=0.5)
    table = torch.tensor(counts(dm, 8))
    assert table[:, 0].tolist() == [24, 3, 2, 1]
    assert table[:, 2].tolist() == [3, 24, 2, 1]
    assert table[:, 7].tolist() == [1, 2, 3, 24]
    assert table.sum(0).tolist() == [30] * 8


def test_with_equal_classes_every_experience_is_blurry_ratio_foreign() -> None:
    dm = blurry(data(6, 40), data(6, 4), num_experiences=3, class_order=range(6), blurry_ratio=0.1)
    table = torch.tensor(counts(dm, 6))
    for k in range(3):
        main = table[k, 2 * k : 2 * k + 2].sum()
        assert main / table[k].sum() == pytest.approx(0.9)


def test_all_disjoint_is_the_class_incremental_split() -> None:
    train, test = data(6, 10), data(6, 3, seed=1)
    blurred = blurry(train, test, num_experiences=3, disjoint_ratio=1.0, seed=4)
    plain = class_incremental(train, test, num_experiences=3, seed=4)
    for name in ("train_stream", "test_stream"):
        for a, b in zip(getattr(blurred, name), getattr(plain, name)):
            assert a.classes_in_this_experience == b.classes_in_this_experience
            assert a.dataset.indices.tolist() == b.dataset.indices.tolist()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("ratio", "disjoint"), [(0.5, 4), (0.25, 2), (0.0, 0)])
def test_disjoint_ratio_sets_how_many_classes_never_leak(ratio: float, disjoint: int) -> None:
    dm = blurry(data(8, 20), data(8, 2), num_experiences=4, disjoint_ratio=ratio, blurry_ratio=0.25)
    table = torch.tensor(counts(dm, 8))
    assert int(((table > 0).sum(0) == 1).sum()) == disjoint


def test_test_stream_is_split_by_main_experience() -> None:
    dm = blurry(data(6, 20), data(6, 3), num_experiences=3, class_order=[5, 4, 3, 2, 1, 0])
    assert [e.classes_in_this_experience for e in dm.test_stream] == [(4, 5), (2, 3), (0, 1)]
    for experience in dm.test_stream:
        assert set(items(experience.dataset)[1].tolist()) == set(experience.classes_in_this_experience)


def test_same_seed_same_stream() -> None:
    def rows(seed: int) -> list[list[int]]:
        dm = blurry(data(6, 20), data(6, 2), num_experiences=3, disjoint_ratio=0.5, seed=seed)
        return [e.dataset.indices.tolist() for e in dm.train_stream]  # type: ignore[attr-defined]

    assert rows(0) == rows(0)
    assert rows(0) != rows(1)


def test_in_memory_inputs_keep_the_fast_path() -> None:
    train = data(4, 10)
    dm = blurry(train, data(4, 2), num_experiences=2)
    assert all(e.dataset.inputs is train.inputs for e in dm.train_stream)  # type: ignore[attr-defined]


@pytest.mark.parametrize("blurry_ratio", [0.0, 0.3])
def test_an_online_blurry_stream_learns_classes_before_their_main_experience(blurry_ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 3
    y = torch.arange(4).repeat(40)
    x = centers[y] + torch.randn(len(y), 8, generator=g)
    stream = blurry(InMemoryDataset(x, y), InMemoryDataset(x, y), num_experiences=2, blurry_ratio=blurry_ratio)
    dm = online(stream, 10, shuffle=True)
    torch.manual_seed(0)
    result = fit_stream(quiet_trainer(), ContinualModule(TinyClassifier(in_features=8, num_classes=4)), dm)
    assert result.accuracy_matrix.shape == (2, 2)
    # R[0, 1]: the classes of experience 1 after experience 0 only, where 30% of them leaked
    assert (result.accuracy_matrix[0, 1] > 0.5) == (blurry_ratio > 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 0}, ValueError, "`num_experiences`: expected a positive integer"),
        ({"num_experiences": 3}, ValueError, "`num_experiences`: 3 does not divide the 4 classes"),
        ({"disjoint_ratio": 1.5}, ValueError, r"`disjoint_ratio`: expected a number in \[0, 1\], got 1.5"),
        ({"blurry_ratio": 1.0}, ValueError, r"`blurry_ratio`: expected a number in \[0, 1\), got 1.0"),
        ({"blurry_ratio": -0.1}, ValueError, r"`blurry_ratio`: expected a number in \[0, 1\)"),
        ({"spread_decay": 0.0}, ValueError, r"`spread_decay`: expected a number in \(0, 1\], got 0.0"),
        ({"spread_decay": "fast"}, TypeError, "`spread_decay`: expected a number, got str"),
        ({"class_order": [0, 1, 2, 9]}, ValueError, r"`class_order`: .*unknown class ids \[9\]"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    kwargs.setdefault("num_experiences", 2)
    with pytest.raises(error, match=match):
        blurry(data(4, 10), data(4, 2), **kwargs)


def test_test_classes_absent_from_training_are_an_error() -> None:
    test = InMemoryDataset(torch.zeros(2, 2), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"`test_dataset`: holds class ids \[7\] that no train sample has"):
        blurry(data(4, 10), test, num_experiences=2)
