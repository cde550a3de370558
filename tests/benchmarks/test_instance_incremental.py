"""instance_incremental: new samples of the same classes per experience."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks.instance_incremental import instance_incremental, split_by_instance
from lightning_cl.core.data import InMemoryDataset, collate
from tests.conftest import TinyClassifier, quiet_trainer

CLASS_SIZES = (7, 10, 13)  # uneven on purpose: balancing must still be exact


class GenericDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def traceable(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Shuffled labels with the given class sizes; row i of x is ``[i, y_i]``."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(CLASS_SIZES)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    return torch.stack([torch.arange(len(y)), y], dim=1).float(), y


def datasets(kind: str) -> tuple[Dataset, Dataset]:
    wrap = InMemoryDataset if kind == "tensor" else GenericDataset
    return wrap(*traceable(0)), wrap(*traceable(1))


def items(dataset: Dataset) -> list[Tensor]:
    return collate([dataset[i] for i in range(len(dataset))])  # type: ignore[arg-type]


KINDS = ["tensor", "generic"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("balance", [False, True])
def test_every_train_sample_lands_in_exactly_one_experience(kind: str, balance: bool) -> None:
    train, test = datasets(kind)
    dm = instance_incremental(train, test, num_experiences=4, balance_classes=balance)

    sizes = [len(e) for e in dm.train_stream]
    assert sum(sizes) == sum(CLASS_SIZES) and max(sizes) - min(sizes) <= 1
    parts = [items(e.dataset) for e in dm.train_stream]
    rows = torch.cat([x[:, 0] for x, _ in parts]).long()
    assert sorted(rows.tolist()) == list(range(sum(CLASS_SIZES)))
    for (x, y), experience in zip(parts, dm.train_stream):
        assert torch.equal(y, x[:, 1].long())  # targets travel with their samples
        assert experience.classes_in_this_experience == tuple(torch.unique(y).tolist())
        assert experience.task_label == 0


@pytest.mark.parametrize("kind", KINDS)
def test_balanced_split_gives_each_experience_its_share_of_every_class(kind: str) -> None:
    train, test = datasets(kind)
    dm = instance_incremental(train, test, num_experiences=3, balance_classes=True, seed=5)

    counts = torch.stack([torch.bincount(items(e.dataset)[1], minlength=3) for e in dm.train_stream])
    # class c has n_c samples: every experience gets floor(n_c / 3) or ceil(n_c / 3) of them
    for c, n in enumerate(CLASS_SIZES):
        assert set(counts[:, c].tolist()) <= {n // 3, -(-n // 3)}
        assert int(counts[:, c].sum()) == n


def test_unbalanced_split_is_a_seeded_shuffle_cut_in_parts() -> None:
    x, y = traceable()
    train, _ = split_by_instance(InMemoryDataset(x, y), InMemoryDataset(x, y), num_experiences=3, seed=7)
    permutation = torch.randperm(len(y), generator=torch.Generator().manual_seed(7))
    expected = [p.sort().values for p in torch.tensor_split(permutation, 3)]
    assert [e.dataset.indices.tolist() for e in train] == [p.tolist() for p in expected]  # type: ignore[attr-defined]


@pytest.mark.parametrize("balance", [False, True])
def test_same_seed_same_stream_other_seed_other_stream(balance: bool) -> None:
    def rows(seed: int) -> list[list[int]]:
        train, test = datasets("tensor")
        dm = instance_incremental(train, test, num_experiences=3, seed=seed, balance_classes=balance)
        return [e.dataset.indices.tolist() for e in dm.train_stream]  # type: ignore[attr-defined]

    assert rows(3) == rows(3)
    assert rows(3) != rows(4)


@pytest.mark.parametrize("kind", KINDS)
def test_the_whole_test_set_is_one_experience(kind: str) -> None:
    train, test = datasets(kind)
    dm = instance_incremental(train, test, num_experiences=3)

    assert len(dm.test_stream) == 1
    (only,) = dm.test_stream
    x, _ = items(only.dataset)
    assert sorted(x[:, 0].long().tolist()) == list(range(len(test)))  # type: ignore[arg-type]
    assert only.classes_in_this_experience == (0, 1, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_task_labels_repeat_the_test_set_once_per_task(kind: str) -> None:
    train, test = datasets(kind)
    dm = instance_incremental(train, test, num_experiences=3, task_labels=True)

    assert [e.task_label for e in dm.train_stream] == [0, 1, 2]
    assert [e.task_label for e in dm.test_stream] == [0, 1, 2]
    for k in range(3):
        _, _, t = items(dm.train_stream[k].dataset)
        assert set(t.tolist()) == {k}
        _, y, t = items(dm.test_stream[k].dataset)
        assert len(y) == len(test) and set(t.tolist()) == {k}  # type: ignore[arg-type]


def test_in_memory_inputs_keep_the_fast_path() -> None:
    train, test = datasets("tensor")
    dm = instance_incremental(train, test, num_experiences=2, task_labels=True)
    for experience in [*dm.train_stream, *dm.test_stream]:
        assert isinstance(experience.dataset, InMemoryDataset)
        assert experience.dataset.inputs is train.inputs or experience.dataset.inputs is test.inputs  # type: ignore[attr-defined]


def test_trains_with_a_real_trainer_into_a_one_column_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat(40)
    x = centers[y] + torch.randn(len(y), 8, generator=g)
    dm = instance_incremental(InMemoryDataset(x, y), InMemoryDataset(x, y), num_experiences=3, batch_size=16)
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=3))

    result = fit_stream(quiet_trainer(max_epochs=2), model, dm)

    assert result.accuracy_matrix.shape == (3, 1)
    assert result.accuracy_matrix[-1, 0] > 0.9  # same classes every time: nothing to forget


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 0}, ValueError, "`num_experiences`: expected a positive integer, got 0"),
        ({"num_experiences": True}, ValueError, "`num_experiences`: expected a positive integer"),
        (
            {"num_experiences": 31},
            ValueError,
            r"`num_experiences`: expected at most 30 \(the number of train samples\)",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    train, test = datasets("tensor")
    with pytest.raises(error, match=match):
        instance_incremental(train, test, **kwargs)


def test_bad_datasets() -> None:
    x, y = traceable()
    with pytest.raises(ValueError, match="`train_dataset`: expected class ids >= 0"):
        instance_incremental(InMemoryDataset(x, y - 1), InMemoryDataset(x, y), num_experiences=2)
    empty = InMemoryDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="`test_dataset`: expected at least one test sample"):
        instance_incremental(InMemoryDataset(x, y), empty, num_experiences=2)
