"""Per-item attributes, named transform groups, collate_fn and BalancedSampler of lightning_cl.core.data."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.core.data import (
    BalancedSampler,
    ConcatDataset,
    InMemoryDataset,
    StackedBatch,
    SubsetDataset,
    collate,
    collate_fn_of,
    group_labels,
    in_group,
    task_labels_of,
)

N = 10


def add_100(x: Tensor) -> Tensor:
    return x + 100


def times_2(x: Tensor) -> Tensor:
    return x * 2


def negate(x: Tensor) -> Tensor:
    return -x


def my_collate(batch: Any) -> dict[str, Tensor]:
    """A user's collate: a dict instead of a list."""
    x, y = collate(batch)[:2]
    return {"x": x, "y": y}


def other_collate(batch: Any) -> Any:
    return collate(batch)


def make(task_labels: bool = False, **kwargs: Any) -> InMemoryDataset:
    """x[i] = [i, i], y = i % 3, sample_id = 1000 + i, group = i % 2, box [N, 2] = (i, -i)."""
    x = torch.arange(N, dtype=torch.float32)[:, None].repeat(1, 2)
    attributes = {
        "sample_id": torch.arange(N) + 1000,
        "group": torch.arange(N) % 2,
        "box": torch.stack([torch.arange(N), -torch.arange(N)], 1),
    }
    tasks = torch.arange(N) // 5 if task_labels else None
    return InMemoryDataset(x, torch.arange(N) % 3, tasks, attributes=attributes, **kwargs)


def rows(dataset: Dataset) -> list[int]:
    """The row id (x[:, 0]) of every item, read one by one."""
    return [int(dataset[i][0][0]) for i in range(len(dataset))]  # type: ignore[arg-type]


def batch_equals_items(dataset: Any, indices: list[int]) -> None:
    """The fast path and the per-sample path give the same samples."""
    batch = collate(dataset.__getitems__(indices))
    items = [dataset[i] for i in indices]
    assert len(batch) == len(items[0])
    for column, values in zip(batch, zip(*items)):
        torch.testing.assert_close(column, torch.stack([torch.as_tensor(v) for v in values]), rtol=0, atol=0)


# ------------------------------------------------------------------------------- attributes
@pytest.mark.parametrize("task_labels", [False, True])
def test_attributes_are_not_in_the_sample_unless_asked(task_labels: bool) -> None:
    ds = make(task_labels)
    assert len(ds[0]) == (3 if task_labels else 2)
    assert len(collate(ds.__getitems__([0, 1]))) == (3 if task_labels else 2)
    asked = ds.with_return_attributes(["group", "sample_id"])
    sample = asked[7]
    assert len(sample) == (5 if task_labels else 4)
    assert (int(sample[-2]), int(sample[-1])) == (1, 1007)
    batch_equals_items(asked, [7, 2, 2, 9])


def test_attributes_follow_subset_relabel_and_transforms() -> None:
    ds = make().subset([9, 4, 1, 6]).subset([3, 0, 2])  # items 6, 9, 1
    assert ds.attributes["sample_id"].tolist() == [1006, 1009, 1001]
    assert ds.attributes["box"].tolist() == [[6, -6], [9, -9], [1, -1]]
    relabelled = ds.relabel(torch.tensor([5, 5, 5]), torch.tensor([1, 2, 3])).with_transform(add_100)
    assert relabelled.attributes["sample_id"].tolist() == [1006, 1009, 1001]
    x, y, t, sample_id, box = relabelled.with_return_attributes(["sample_id", "box"])[1]
    assert (x.tolist(), int(y), int(t), int(sample_id), box.tolist()) == ([109.0, 109.0], 5, 2, 1009, [9, -9])
    assert relabelled.with_group("eval").attributes["group"].tolist() == [0, 1, 1]


def test_subset_of_a_returning_dataset_keeps_returning() -> None:
    ds = make().with_return_attributes(["sample_id"]).subset([3, 1])
    assert [int(s[2]) for s in (ds[0], ds[1])] == [1003, 1001]


def test_with_attributes_adds_and_replaces() -> None:
    ds = make().subset([2, 5]).with_attributes({"weight": torch.tensor([0.5, 2.0]), "group": [7, 8]})
    assert ds.attributes["weight"].tolist() == [0.5, 2.0]
    assert ds.attributes["group"].tolist() == [7, 8]
    assert ds.attributes["sample_id"].tolist() == [1002, 1005]


@pytest.mark.parametrize(
    ("attributes", "error", "match"),
    [
        ({"group": torch.zeros(3)}, ValueError, r"`attributes\['group'\]`: expected 10 values \(one per item\)"),
        ({"group": torch.tensor(1)}, ValueError, r"`attributes\['group'\]`: expected 10 values"),
        ({"targets": torch.zeros(10)}, ValueError, r"'targets' is the dataset's own field; give it as `targets`"),
        ({"task_labels": torch.zeros(10)}, ValueError, "give it as `task_labels`"),
        ({3: torch.zeros(10)}, TypeError, "`attributes`: expected non-empty string names, got 3"),
        ({"group": object()}, TypeError, r"`attributes\['group'\]`: expected a tensor"),
        ([torch.zeros(10)], TypeError, "`attributes`: expected a mapping from names to per-item tensors, got list"),
    ],
)
def test_bad_attributes(attributes: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        InMemoryDataset(torch.zeros(N, 2), torch.zeros(N, dtype=torch.long), attributes=attributes)
    with pytest.raises(error, match=match):
        make().with_attributes(attributes)


@pytest.mark.parametrize(
    ("names", "error", "match"),
    [
        (["nope"], ValueError, r"`return_attributes`: expected names of the dataset's attributes \['box', 'group'"),
        ("group", TypeError, "`return_attributes`: expected a sequence of attribute names"),
    ],
)
def test_bad_return_attributes(names: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make().with_return_attributes(names)


# -------------------------------------------------------------------------- transform groups
def test_group_transform_runs_after_the_shared_one() -> None:
    ds = make(transform=times_2, transform_groups={"train": add_100})
    assert ds.group == "train"
    assert ds[3][0].tolist() == [106.0, 106.0]  # (3 * 2) + 100
    assert ds.with_group("eval")[3][0].tolist() == [6.0, 6.0]
    assert ds.eval().train()[3][0].tolist() == [106.0, 106.0]
    batch_equals_items(ds, [3, 0, 8])
    batch_equals_items(ds.eval(), [3, 0, 8])


def test_with_transform_adds_to_the_shared_part_or_to_one_group() -> None:
    ds = make(transform_groups={"train": add_100})
    shared = ds.with_transform(times_2)  # before the group's own, in every group
    assert shared[1][0].tolist() == [102.0, 102.0]
    assert shared.eval()[1][0].tolist() == [2.0, 2.0]
    eval_only = ds.with_transform(negate, group="eval")
    assert eval_only[1][0].tolist() == [101.0, 101.0]
    assert eval_only.eval()[1][0].tolist() == [-1.0, -1.0]
    after = ds.with_transform(times_2, group="train")  # after the group's own
    assert after[1][0].tolist() == [202.0, 202.0]


def test_declared_groups_and_unknown_ones() -> None:
    ds = make(transform_groups={"strong": add_100})
    assert ds.with_group("strong")[0][0].tolist() == [100.0, 100.0]
    assert ds[0][0].tolist() == [0.0, 0.0]  # train exists without a transform: identity
    with pytest.raises(
        ValueError,
        match=r"`group`: expected one of the dataset's transform groups \['train', 'eval', 'strong'\], got 'test'",
    ):
        ds.with_group("test")
    with pytest.raises(ValueError, match="`group`"):
        make(group="weak")


def test_group_survives_subset_relabel_and_attributes() -> None:
    ds = make(transform_groups={"train": add_100}).eval()
    derived = ds.subset([4, 2]).relabel(torch.tensor([0, 0]), None).with_attributes({"w": torch.ones(2)})
    assert derived.group == "eval" and derived[0][0].tolist() == [4.0, 4.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"transform_groups": {"train": 3}}, TypeError, r"`transform_groups\['train'\]`: expected a callable"),
        ({"transform_groups": [add_100]}, TypeError, "`transform_groups`: expected a mapping"),
        ({"transform_groups": {"": add_100}}, TypeError, "`transform_groups`: expected non-empty string names"),
        ({"transform": "flip"}, TypeError, r"`transform`: expected a callable \(or None\), got str"),
        ({"collate_fn": 3}, TypeError, r"`collate_fn`: expected a callable \(or None\), got int"),
    ],
)
def test_bad_group_and_collate_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_with_transform_rejects_a_bad_group_or_transform() -> None:
    with pytest.raises(TypeError, match="`group`: expected a group name"):
        make().with_transform(add_100, group=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`transform`: expected a callable"):
        make().with_transform(5)  # type: ignore[arg-type]


def test_in_group_switches_only_datasets_with_groups() -> None:
    ds = make(transform_groups={"train": add_100})
    assert in_group(ds, "train") is ds  # already there: no copy
    assert in_group(ds, "eval").group == "eval"
    plain = [(torch.zeros(1), 0)]
    assert in_group(plain, "eval") is plain  # type: ignore[arg-type]


def test_datasets_with_attributes_and_groups_pickle_for_workers() -> None:
    ds = make(transform=times_2, transform_groups={"train": add_100}, collate_fn=my_collate)
    ds = ds.with_return_attributes(["sample_id"]).subset([5, 1])
    again = pickle.loads(pickle.dumps(ds))
    assert again.collate_fn is my_collate and again.group == "train"
    batch_equals_items(again, [0, 1])
    assert again[0][0].tolist() == ds[0][0].tolist() == [110.0, 110.0]


# ---------------------------------------------------------------------------- SubsetDataset
class Generic(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, with its own collate_fn."""

    collate_fn = staticmethod(my_collate)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return torch.tensor([float(i)]), i % 3


def test_subset_dataset_carries_attributes_groups_and_the_bases_collate() -> None:
    ds = SubsetDataset(
        Generic(),
        [8, 3, 5],
        [0, 1, 2],
        attributes={"sample_id": torch.tensor([8, 3, 5])},
        transform_groups={"train": add_100},
    )
    assert ds.collate_fn is my_collate
    assert ds[0][0].tolist() == [108.0] and ds.eval()[0][0].tolist() == [8.0]
    sub = ds.subset([2, 0]).relabel(torch.tensor([4, 4]), torch.tensor([1, 1]))
    assert sub.attributes["sample_id"].tolist() == [5, 8]
    x, y, t, sample_id = sub.with_return_attributes(["sample_id"])[0]
    assert (x.tolist(), int(y), int(t), int(sample_id)) == ([105.0], 4, 1, 5)
    assert sub.with_transform(negate, group="eval").eval()[0][0].tolist() == [-5.0]
    assert sub.with_collate_fn(other_collate).collate_fn is other_collate


def test_subset_dataset_rejects_misaligned_fields() -> None:
    with pytest.raises(ValueError, match=r"`attributes\['a'\]`: expected 2 values"):
        SubsetDataset(Generic(), [0, 1], [0, 0], attributes={"a": torch.zeros(3)})
    with pytest.raises(ValueError, match="`task_labels`: expected 2 values, got 1"):
        SubsetDataset(Generic(), [0, 1], [0, 0], [1])


# ---------------------------------------------------------------------------- ConcatDataset
def two_parts(**kwargs: Any) -> ConcatDataset:
    """Items 0..4 of make() then items 5..9: the concatenation is make() itself."""
    ds = make(**kwargs)
    return ConcatDataset([ds.subset(range(5)), ds.subset(range(5, N))])


def test_concat_concatenates_the_attributes_every_part_has() -> None:
    a = make().subset([0, 1])
    b = make().subset([2]).with_attributes({"only_here": torch.ones(1)})
    both = ConcatDataset([a, b])
    assert sorted(both.attributes) == ["box", "group", "sample_id"]
    assert both.attributes["sample_id"].tolist() == [1000, 1001, 1002]
    assert both.task_labels is None
    assert (
        ConcatDataset([make(task_labels=True), make(task_labels=True)]).task_labels.tolist()
        == (torch.arange(N) // 5).tolist() * 2
    )


@pytest.mark.parametrize("task_labels", [False, True])
def test_concat_subset_keeps_order_fast_path_and_attributes(task_labels: bool) -> None:
    both = two_parts(task_labels=task_labels)
    picked = [7, 2, 9, 0, 7]
    sub = both.subset(picked)
    assert rows(sub) == picked
    assert sub.targets.tolist() == [i % 3 for i in picked]
    assert sub.attributes["sample_id"].tolist() == [1000 + i for i in picked]
    assert all(isinstance(d, InMemoryDataset) for d in sub.datasets)
    batch = sub.__getitems__([4, 0, 1])
    assert isinstance(batch, StackedBatch)
    batch_equals_items(sub, [4, 0, 1])
    assert rows(sub.subset([1, 3])) == [2, 0]
    if task_labels:
        assert sub.task_labels.tolist() == [i // 5 for i in picked]  # type: ignore[union-attr]


def test_concat_of_a_generic_dataset_subsets_it_per_sample() -> None:
    both = ConcatDataset([make().subset([0, 1]).with_collate_fn(my_collate), Generic()])
    sub = both.subset([5, 0])
    assert [float(sub[i][0][0]) for i in range(2)] == [3.0, 0.0]
    assert isinstance(sub.datasets[1], SubsetDataset)


def test_concat_with_group_transform_and_return_attributes_reach_every_part() -> None:
    both = two_parts(transform_groups={"train": add_100}).subset([8, 1])
    assert [float(both[i][0][0]) for i in range(2)] == [108.0, 101.0]
    assert [float(both.eval()[i][0][0]) for i in range(2)] == [8.0, 1.0]
    assert [float(both.with_transform(negate, group="train")[i][0][0]) for i in range(2)] == [-108.0, -101.0]
    returning = both.with_return_attributes(["sample_id"])
    assert [int(returning[i][2]) for i in range(2)] == [1008, 1001]
    batch_equals_items(returning, [1, 0])


def test_concat_with_attributes_lands_on_the_right_items_after_a_subset() -> None:
    sub = two_parts().subset([6, 3, 8])
    tagged = sub.with_attributes({"weight": torch.tensor([6.0, 3.0, 8.0])})  # the row id, as a weight
    assert tagged.attributes["weight"].tolist() == [6.0, 3.0, 8.0]
    returning = tagged.with_return_attributes(["weight"])
    samples = [returning[i] for i in range(3)]
    assert [float(x[0]) for x, _, _ in samples] == [float(w) for _, _, w in samples] == [6.0, 3.0, 8.0]
    batch_equals_items(returning, [2, 0, 1])


def test_concat_collate_fn_is_the_parts_one() -> None:
    a, b = make().subset([0]), make().subset([1])
    assert ConcatDataset([a, b]).collate_fn is None
    same = ConcatDataset([a.with_collate_fn(my_collate), b.with_collate_fn(my_collate)])
    assert same.collate_fn is my_collate and same.subset([1]).collate_fn is my_collate
    with pytest.raises(ValueError, match="`datasets`: the parts carry different `collate_fn`"):
        ConcatDataset([a.with_collate_fn(my_collate), b])
    chosen = ConcatDataset([a.with_collate_fn(my_collate), b], collate_fn=other_collate)
    assert collate_fn_of(chosen) is other_collate and collate_fn_of(a) is collate


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: ConcatDataset([make()], order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
            ValueError,
            "`order`: expected a permutation of 0..9",
        ),
        (lambda: two_parts().subset([]), ValueError, "`indices`: expected at least one index"),
        (
            lambda: ConcatDataset([Generic()]).with_transform(add_100),
            TypeError,
            r"part 0 \(Generic\) has no `with_transform`",
        ),
        (
            lambda: ConcatDataset([Generic()]).with_attributes({"a": torch.zeros(N)}),
            TypeError,
            "has no `with_attributes`",
        ),
        (
            lambda: two_parts().with_attributes({"a": torch.zeros(3)}),
            ValueError,
            r"`attributes\['a'\]`: expected 10 values",
        ),
    ],
)
def test_concat_bad_input(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- group labels
def test_group_labels_reads_classes_tasks_and_attributes() -> None:
    ds = make(task_labels=True)
    assert group_labels(ds, "class").tolist() == (torch.arange(N) % 3).tolist()
    assert group_labels(ds, "task").tolist() == (torch.arange(N) // 5).tolist()
    assert group_labels(ds, "group").tolist() == (torch.arange(N) % 2).tolist()
    assert task_labels_of([(torch.zeros(1), 0, 2), (torch.zeros(1), 1, 3)]).tolist() == [2, 3]  # type: ignore[union-attr, arg-type]


@pytest.mark.parametrize(
    ("by", "match"),
    [
        ("task", "`balance`: 'task' balances task labels, but the InMemoryDataset has none"),
        (
            "site",
            r"`balance`: expected 'task', 'class' or the name of an attribute of the InMemoryDataset "
            r"\(\['box', 'group', 'sample_id'\]\), got 'site'",
        ),
        ("box", r"`balance`: the attribute 'box' must hold one value per item to group by, got shape \(10, 2\)"),
    ],
)
def test_group_labels_errors(by: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_labels(make(), by)


# --------------------------------------------------------------------------- BalancedSampler
GROUPS = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2])  # 9 / 2 / 1 items


def test_balanced_sampler_draws_one_of_each_group_per_round() -> None:
    order = list(BalancedSampler(GROUPS, seed=1, experience=0, length=12))
    assert len(order) == 12
    rounds = GROUPS[order].view(4, 3)
    for r in rounds:  # every consecutive triple holds each group once
        assert sorted(r.tolist()) == [0, 1, 2]
    drawn = torch.tensor(order)
    # the small groups are oversampled (each item equally often), the large one not repeated
    assert sorted(drawn[GROUPS[drawn] == 1].tolist()) == [9, 9, 10, 10]
    assert drawn[GROUPS[drawn] == 2].tolist() == [11] * 4
    assert len(set(drawn[GROUPS[drawn] == 0].tolist())) == 4


def test_balanced_sampler_default_length_and_partial_round() -> None:
    sampler = BalancedSampler(GROUPS, seed=0, experience=0)
    order = list(sampler)
    assert len(sampler) == len(order) == 12
    short = list(BalancedSampler(GROUPS, seed=0, experience=0, length=5))
    assert len(short) == 5
    assert sorted(GROUPS[short[:3]].tolist()) == [0, 1, 2]
    assert len(set(GROUPS[short[3:]].tolist())) == 2  # a cut round still draws distinct groups


def test_balanced_sampler_is_a_pure_function_of_seed_experience_epoch() -> None:
    def draw(seed: int, experience: int, epoch: int) -> list[int]:
        sampler = BalancedSampler(GROUPS, seed, experience)
        sampler.set_epoch(epoch)
        return list(sampler)

    state = torch.random.get_rng_state()
    assert draw(3, 1, 2) == draw(3, 1, 2)
    assert len({tuple(draw(*args)) for args in [(3, 1, 2), (4, 1, 2), (3, 0, 2), (3, 1, 0)]}) == 4
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


@pytest.mark.parametrize("length", [12, 11])
def test_balanced_sampler_shards_steps_of_consecutive_entries_under_ddp(length: int) -> None:
    whole = BalancedSampler(GROUPS, seed=5, experience=2, length=length)
    ranks = [BalancedSampler(GROUPS, seed=5, experience=2, length=length, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in [whole, *ranks]:
        sampler.set_epoch(3)
    order = whole.order().tolist()
    assert list(whole) == order
    padded = order + order[: (-length) % 2]  # a DistributedSampler pads with the first entries
    assert [list(r) for r in ranks] == [padded[0::2], padded[1::2]]
    assert [len(r) for r in ranks] == [-(-length // 2)] * 2
    # batch 3 on each of 2 ranks: a step draws 6 consecutive entries, two of each group
    step = sorted(GROUPS[list(ranks[0])[:3] + list(ranks[1])[:3]].tolist())
    assert step == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": torch.zeros(0)}, r"`groups`: expected a non-empty 1-D tensor .* got shape \(0,\)"),
        ({"groups": torch.zeros(2, 2)}, r"got shape \(2, 2\)"),
        ({"groups": GROUPS, "length": 0}, "`length`: expected a positive integer"),
    ],
)
def test_balanced_sampler_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BalancedSampler(seed=0, experience=0, **kwargs)
