"""Datasets, batching and sampling: InMemoryDataset, SubsetDataset, ConcatDataset, collate, samplers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from lightning_cl.core.data import (
    ConcatDataset,
    InMemoryDataset,
    SeededRandomSampler,
    ShardedOrder,
    StackedBatch,
    SubsetDataset,
    collate,
    targets_of,
)


def affine(x: Tensor) -> Tensor:
    return x * 2.0 + 1.0


def make_dataset(
    n: int = 12, task_labels: bool = False, transform: Callable[[Tensor], Tensor] | None = None, seed: int = 0
) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 3, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    t = torch.arange(n) % 3 if task_labels else None
    return InMemoryDataset(x, y, t, transform)


def stack_items(dataset: Dataset, indices: list[int]) -> list[Tensor]:
    """The per-sample path: one ``dataset[i]`` per index, stacked field by field."""
    return [torch.stack([torch.as_tensor(v) for v in column]) for column in zip(*(dataset[i] for i in indices))]


def assert_same_batch(actual: list[Tensor], expected: list[Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=0, atol=0)


class PairDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, n: int = 9) -> None:
        self.x = torch.arange(n * 2, dtype=torch.float32).view(n, 2)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        self.reads += 1
        return self.x[i], int(i) % 3


# ------------------------------------------------------------------------------ InMemoryDataset
@pytest.mark.parametrize("task_labels", [False, True])
@pytest.mark.parametrize("transform", [None, affine], ids=["no-transform", "batched-transform"])
def test_item_is_the_row_of_a_batch(task_labels: bool, transform: Callable[[Tensor], Tensor] | None) -> None:
    ds = make_dataset(task_labels=task_labels, transform=transform)
    indices = [5, 0, 11, 3, 3]
    batch = collate(ds.__getitems__(indices))

    assert len(batch) == (3 if task_labels else 2)
    assert_same_batch(batch, stack_items(ds, indices))
    expected_x = ds.inputs[indices] if transform is None else ds.inputs[indices] * 2.0 + 1.0
    torch.testing.assert_close(batch[0], expected_x, rtol=0, atol=0)
    assert batch[1].tolist() == ds.targets[indices].tolist()
    if task_labels:
        assert batch[2].tolist() == [i % 3 for i in indices]


def test_item_indexing_bounds() -> None:
    ds = make_dataset(n=4)
    assert_same_batch(list(ds[-1]), list(ds[3]))
    with pytest.raises(IndexError, match="index 4 is out of range for a dataset of 4 items"):
        ds[4]
    with pytest.raises(IndexError, match="index -5"):
        ds[-5]


def test_subset_shares_storage_and_composes_indices() -> None:
    ds = make_dataset(task_labels=True, transform=affine)
    sub = ds.subset([4, 2, 7])
    subsub = sub.subset([2, 0])

    assert sub.inputs is ds.inputs
    assert subsub.inputs is ds.inputs
    assert sub.indices.tolist() == [4, 2, 7]
    # position 2 of sub is item 7 of ds, position 0 is item 4
    assert subsub.indices.tolist() == [7, 4]
    assert len(subsub) == 2
    assert_same_batch(stack_items(subsub, [0, 1]), stack_items(ds, [7, 4]))
    assert_same_batch(collate(subsub.__getitems__([1, 0])), stack_items(ds, [4, 7]))


def test_subset_rejects_nested_indices() -> None:
    with pytest.raises(ValueError, match=r"`indices`: expected a 1-D sequence of indices, got shape \(1, 2\)"):
        make_dataset().subset([[0, 1]])


def test_relabel_replaces_targets_and_task_labels() -> None:
    ds = make_dataset(n=4, transform=affine)
    relabelled = ds.relabel(torch.tensor([9, 8, 7, 6]), torch.tensor([1, 1, 2, 2]))

    assert relabelled.inputs is ds.inputs
    assert relabelled.targets.tolist() == [9, 8, 7, 6]
    x, y, t = relabelled[2]
    torch.testing.assert_close(x, ds[2][0], rtol=0, atol=0)
    assert (int(y), int(t)) == (7, 2)
    # the original is untouched and still yields (x, y)
    assert len(ds[2]) == 2
    assert ds.targets.tolist() != [9, 8, 7, 6]

    without_tasks = relabelled.relabel(torch.tensor([0, 0, 1, 1]), None)
    assert len(without_tasks[0]) == 2


def test_relabel_of_a_subset_keeps_its_items() -> None:
    ds = make_dataset(n=6)
    sub = ds.subset([5, 1]).relabel(torch.tensor([3, 4]), None)
    torch.testing.assert_close(sub[0][0], ds[5][0], rtol=0, atol=0)
    torch.testing.assert_close(sub[1][0], ds[1][0], rtol=0, atol=0)
    assert sub.targets.tolist() == [3, 4]


def test_with_transform_composes_after_the_existing_one() -> None:
    x = torch.arange(6.0).view(3, 2)
    ds = InMemoryDataset(x, torch.tensor([0, 1, 2]), transform=lambda b: b * 10)
    shifted = ds.with_transform(lambda b: b + 1)

    # (x * 10) + 1, not (x + 1) * 10
    assert shifted[1][0].tolist() == [21.0, 31.0]
    assert collate(shifted.__getitems__([0, 2]))[0].tolist() == [[1.0, 11.0], [41.0, 51.0]]
    assert ds[1][0].tolist() == [20.0, 30.0]
    assert ds.with_transform(None)[1][0].tolist() == [20.0, 30.0]
    assert InMemoryDataset(x, [0, 1, 2]).with_transform(lambda b: b + 1)[1][0].tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(targets=[0, 1]), ValueError, r"`targets`: expected 3 values \(one per input\), got 2"),
        (dict(task_labels=[0, 1, 2, 3]), ValueError, r"`task_labels`: expected 3 values \(one per input\), got 4"),
        (dict(indices=[0, 1]), ValueError, r"`targets`: expected 2 values \(one per input\), got 3"),
        (dict(targets=[0.0, 1.0, 2.0]), TypeError, r"`targets`: expected integer class ids, got dtype torch.float"),
        (dict(task_labels=[True, False, True]), TypeError, r"`task_labels`: expected integer class ids"),
        (dict(inputs=[[0.0], [1.0], [2.0]]), TypeError, r"`inputs`: expected a torch.Tensor, got list"),
    ],
    ids=["targets-length", "task-labels-length", "indices-length", "float-targets", "bool-task-labels", "inputs-list"],
)
def test_in_memory_dataset_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    arguments = dict(inputs=torch.zeros(3, 1), targets=[0, 1, 2])
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        InMemoryDataset(**arguments)


# ---------------------------------------------------------------------------- StackedBatch, collate
@pytest.mark.parametrize("task_labels", [False, True])
def test_default_collate_loader_matches_ours(task_labels: bool) -> None:
    ds = make_dataset(n=11, task_labels=task_labels, transform=affine)
    plain = list(DataLoader(ds, batch_size=4))
    ours = list(DataLoader(ds, batch_size=4, collate_fn=collate))

    assert [len(b[0]) for b in ours] == [4, 4, 3]
    assert len(plain) == len(ours)
    for a, b in zip(plain, ours):
        assert_same_batch(list(a), list(b))


def test_stacked_batch_is_a_sequence_of_samples() -> None:
    x, y = torch.arange(6.0).view(3, 2), torch.tensor([4, 5, 6])
    batch = StackedBatch([x, y])

    assert len(batch) == 3
    assert [int(s[1]) for s in batch] == [4, 5, 6]
    assert batch[1][0].tolist() == [2.0, 3.0]
    collated = collate(batch)
    assert isinstance(collated, list)
    assert collated[0] is x and collated[1] is y


def test_collate_of_samples_is_default_collate() -> None:
    samples = [(torch.tensor([1.0, 2.0]), 3), (torch.tensor([4.0, 5.0]), 6)]
    assert_same_batch(collate(samples), default_collate(samples))
    assert collate(samples)[1].tolist() == [3, 6]


# ------------------------------------------------------------------------------- ConcatDataset
def concat_parts() -> list[Dataset]:
    return [
        make_dataset(n=5, seed=1),
        make_dataset(n=3, seed=2, transform=affine),
        # the per-sample part, shaped like the tensor parts so that batches stack
        SubsetDataset(PairDataset(), [6, 0, 3, 8], [1, 2, 3, 0], transform=lambda v: v.repeat(3).view(2, 3)),
    ]


def test_concat_batch_follows_the_requested_order() -> None:
    parts = concat_parts()
    concat = ConcatDataset(parts)
    indices = [11, 0, 6, 5, 4, 9, 0, 8]
    batch = collate(concat.__getitems__(indices))

    assert len(concat) == 12
    assert_same_batch(batch, stack_items(concat, indices))
    whole = [stack_items(p, list(range(len(p)))) for p in parts]
    everything = [torch.cat(column) for column in zip(*whole)]
    assert_same_batch(batch, [column[indices] for column in everything])


def test_concat_item_access_maps_to_parts() -> None:
    parts = concat_parts()[:2]
    concat = ConcatDataset(parts)
    assert_same_batch(list(concat[5]), list(parts[1][0]))
    assert_same_batch(list(concat[4]), list(parts[0][4]))
    assert_same_batch(list(concat[-1]), list(parts[1][2]))


def test_concat_targets() -> None:
    parts = concat_parts()
    concat = ConcatDataset(parts)
    expected = parts[0].targets.tolist() + parts[1].targets.tolist() + [1, 2, 3, 0]
    assert concat.targets.tolist() == expected
    assert targets_of(concat).tolist() == expected


def test_concat_skips_empty_parts() -> None:
    a, b = make_dataset(n=5, seed=1), make_dataset(n=3, seed=2)
    concat = ConcatDataset([a.subset([]), a, a.subset([]), b])
    assert len(concat) == 8
    assert len(concat.datasets) == 2
    assert_same_batch(list(concat[5]), list(b[0]))
    with pytest.raises(ValueError, match="`datasets`: expected at least one non-empty dataset"):
        ConcatDataset([a.subset([])])


def test_concat_rejects_mixed_task_labels() -> None:
    with pytest.raises(ValueError, match=r"\[2, 3\] fields \(mixing data with and without task labels"):
        ConcatDataset([make_dataset(n=3), make_dataset(n=3, task_labels=True)])


def test_concat_item_out_of_range_raises() -> None:
    concat = ConcatDataset([make_dataset(n=3)])
    with pytest.raises(IndexError):
        concat[3]


# ------------------------------------------------------------------------------- SubsetDataset
def test_subset_dataset_over_a_generic_dataset() -> None:
    base = PairDataset()
    sub = SubsetDataset(base, [4, 1, 3], [7, 8, 9], task_labels=[0, 0, 1], transform=lambda v: -v)

    assert len(sub) == 3
    x, y, t = sub[0]
    assert x.tolist() == [-8.0, -9.0]
    assert (int(y), int(t)) == (7, 0)
    assert targets_of(sub).tolist() == [7, 8, 9]
    assert_same_batch(collate([sub[i] for i in range(3)]), stack_items(sub, [0, 1, 2]))


def test_subset_dataset_subset_relabel_and_transform_compose() -> None:
    base = PairDataset()
    sub = SubsetDataset(base, [4, 1, 3], [7, 8, 9], transform=lambda v: v * 10)

    nested = sub.subset([2, 0])
    assert nested.base is base
    assert nested.indices.tolist() == [3, 4]
    assert nested.targets.tolist() == [9, 7]
    assert nested[0][0].tolist() == [60.0, 70.0]

    relabelled = sub.relabel(torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]))
    assert [int(relabelled[i][1]) for i in range(3)] == [0, 1, 2]
    assert int(relabelled[1][2]) == 5

    # (v * 10) + 1, not (v + 1) * 10
    assert sub.with_transform(lambda v: v + 1)[1][0].tolist() == [21.0, 31.0]


def test_subset_dataset_rejects_targets_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="`targets`: expected 3 values, got 2"):
        SubsetDataset(PairDataset(), [0, 1, 2], [0, 1])


# ----------------------------------------------------------------------------------- targets_of
def test_targets_of_uses_the_targets_attribute() -> None:
    class Unreadable(Dataset):
        def __init__(self) -> None:
            self.targets = [2, 0, 1]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[Tensor, int]:
            raise AssertionError("targets_of must not read samples when `.targets` exists")

    targets = targets_of(Unreadable())
    assert targets.dtype == torch.long
    assert targets.tolist() == [2, 0, 1]


def test_targets_of_reads_samples_without_a_targets_attribute() -> None:
    base = PairDataset(n=7)
    assert targets_of(base).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert base.reads == 7


def test_targets_of_rejects_float_targets() -> None:
    ds = make_dataset(n=3)
    ds.targets = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(TypeError, match=r"`dataset.targets`: expected integer class ids, got dtype torch.float32"):
        targets_of(ds)


def test_targets_of_rejects_float_targets_read_from_samples() -> None:
    class FloatTargets(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[Tensor, float]:
            return torch.zeros(1), 0.5 + i

    with pytest.raises(TypeError, match="integer"):
        targets_of(FloatTargets())


# ---------------------------------------------------------------------------- SeededRandomSampler
def order(num_samples: int = 50, seed: int = 0, experience: int = 0, epoch: int = 0) -> list[int]:
    sampler = SeededRandomSampler(num_samples, seed, experience)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_a_function_of_seed_experience_epoch() -> None:
    first = order(seed=3, experience=1, epoch=2)
    assert first == order(seed=3, experience=1, epoch=2)
    assert sorted(first) == list(range(50))
    assert first != list(range(50))


@pytest.mark.parametrize(
    "changed", [dict(epoch=3), dict(experience=2), dict(seed=4)], ids=["epoch", "experience", "seed"]
)
def test_sampler_order_changes_with_each_part_of_the_seed(changed: dict) -> None:
    reference = dict(seed=3, experience=1, epoch=2)
    assert order(**{**reference, **changed}) != order(**reference)


def test_sampler_set_epoch() -> None:
    sampler = SeededRandomSampler(50, seed=0, experience=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    sampler.set_epoch(0)

    assert sampler.epoch == 0
    assert epoch1 != epoch0
    assert list(sampler) == epoch0
    assert epoch1 == order(epoch=1)


def test_sampler_longer_than_the_dataset_covers_every_index() -> None:
    sampler = SeededRandomSampler(10, seed=0, experience=0, length=25)
    indices = list(sampler)

    assert len(sampler) == 25
    assert len(indices) == 25
    # whole fresh permutations, cut at `length`
    assert sorted(indices[:10]) == list(range(10))
    assert sorted(indices[10:20]) == list(range(10))
    assert indices[:10] != indices[10:20]
    assert set(indices[20:]) <= set(range(10))
    assert len(set(indices[20:])) == 5


def test_sampler_shorter_than_the_dataset() -> None:
    indices = list(SeededRandomSampler(10, seed=0, experience=0, length=4))
    assert len(indices) == 4
    assert len(set(indices)) == 4


def test_sampler_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    list(SeededRandomSampler(100, seed=1, experience=2))
    assert torch.equal(torch.get_rng_state(), state)


def test_sampler_rejects_an_empty_dataset() -> None:
    with pytest.raises(ValueError, match="`num_samples`: expected at least 1, got 0"):
        SeededRandomSampler(0, seed=0, experience=0)


def test_stacked_transforms_pickle_for_spawned_workers() -> None:
    import pickle

    from lightning_cl.benchmarks.transforms import Normalize, Permute

    ds = InMemoryDataset(torch.arange(8.0).view(2, 1, 2, 2), torch.tensor([0, 1]), transform=Normalize([1.0], [2.0]))
    stacked = ds.with_transform(Permute(torch.tensor([3, 2, 1, 0])))
    copy = pickle.loads(pickle.dumps(stacked))
    torch.testing.assert_close(copy[1][0], stacked[1][0])
    torch.testing.assert_close(stacked[0][0].flatten(), (torch.arange(4.0).flip(0) - 1.0) / 2.0)


# ------------------------------------------------------------------------------- ShardedOrder
def test_sharded_order_shares_out_the_seeded_order_as_one_process_batches_it() -> None:
    inner = SeededRandomSampler(10, seed=3, experience=1)
    order = list(inner)
    shards = [list(ShardedOrder(inner, num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [order[0::2], order[1::2]]
    # step k of two processes with batch 2 holds the samples of step k of one process with batch 4
    for k in range(2):
        assert sorted(shards[0][2 * k : 2 * k + 2] + shards[1][2 * k : 2 * k + 2]) == sorted(order[4 * k : 4 * k + 4])


def test_sharded_order_pads_like_a_distributed_sampler_and_passes_the_epoch_on() -> None:
    inner = SeededRandomSampler(7, seed=0, experience=0)
    shards = [ShardedOrder(inner, num_replicas=3, rank=r) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    every = sorted(i for s in shards for i in s)
    assert sorted(set(every)) == list(range(7)) and len(every) == 9  # two first entries repeated
    first = list(shards[0])
    shards[0].set_epoch(5)
    assert inner.epoch == 5 and list(shards[0]) != first


def test_sharded_order_rank_must_be_below_num_replicas() -> None:
    with pytest.raises(ValueError, match=r"`rank`: expected 0 <= rank < num_replicas \(2\), got 2"):
        ShardedOrder([0, 1], num_replicas=2, rank=2)
