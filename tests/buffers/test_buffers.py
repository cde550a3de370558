"""Buffers: storage policies, selection strategies, slots read back from the stream, state."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from lightning_cl.benchmarks import SplitDigits
from lightning_cl.buffers import (
    Buffer,
    Candidates,
    ClassBalancedBuffer,
    ClosestToCenterSelection,
    ExperienceBalancedBuffer,
    HerdingSelection,
    ParametricBuffer,
    RandomSelection,
    ReservoirBuffer,
)
from lightning_cl.buffers.parametric import group_quotas
from lightning_cl.buffers.selection import selection_strategy


def offer(n: int, experience: int = 0, classes: int = 2, start: int = 0) -> Candidates:
    position = torch.arange(start, start + n)
    return Candidates(
        torch.full((n,), experience, dtype=torch.long),
        position,
        position % classes + 2 * experience,
        torch.full((n,), experience, dtype=torch.long),
    )


def all_buffers(memory_size: int) -> list[Buffer]:
    return [
        ReservoirBuffer(memory_size),
        ClassBalancedBuffer(memory_size),
        ExperienceBalancedBuffer(memory_size),
        ParametricBuffer(memory_size, groupby="task"),
        ParametricBuffer(memory_size, groupby="none"),
    ]


@pytest.mark.parametrize("buffer", all_buffers(37), ids=lambda b: f"{type(b).__name__}-{getattr(b, 'groupby', '')}")
def test_memory_size_is_a_hard_bound(buffer: Buffer) -> None:
    sizes = []
    for e in range(6):
        buffer.update(offer(25 + 7 * e, experience=e))
        sizes.append(len(buffer))
    assert max(sizes) <= 37
    assert sizes[-1] == 37  # full once enough samples were offered
    assert len(buffer.extras) == 0


def test_reservoir_keeps_every_sample_with_the_same_probability() -> None:
    # 2000 independent reservoirs of 10 over 100 samples offered in 4 chunks: each sample's
    # inclusion count is Binomial(2000, 0.1); a chi-square test over the 100 samples
    counts = torch.zeros(100)
    for seed in range(2000):
        buffer = ReservoirBuffer(10, seed=seed)
        for chunk in range(4):
            buffer.update(offer(25, start=25 * chunk))
        counts[buffer.slots.position] += 1
    expected = 2000 * 0.1
    chi2 = float(((counts - expected) ** 2 / (expected * 0.9)).sum())
    assert 60 < chi2 < 140  # 99 degrees of freedom: p in ~(0.001, 0.995)
    # samples offered early are kept as often as late ones (no recency bias)
    assert abs(float(counts[:25].mean() - counts[75:].mean())) < 0.1 * expected


def test_reservoir_is_seeded_and_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a, b = ReservoirBuffer(10, seed=3), ReservoirBuffer(10, seed=3)
    for buffer in (a, b):
        buffer.update(offer(50))
    assert a.fingerprint() == b.fingerprint()
    assert torch.equal(torch.get_rng_state(), state)
    c = ReservoirBuffer(10, seed=4)
    c.update(offer(50))
    assert c.fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    ("available", "memory", "num_groups", "expected"),
    [
        ([2, 100, 100], 10, None, [2, 4, 4]),
        ([100, 100, 100], 10, None, [4, 3, 3]),
        ([1, 1], 10, None, [1, 1]),
        ([100, 100], 10, 5, [2, 2]),
        ([5, 6, 100], 30, None, [5, 6, 19]),
    ],
)
def test_group_quotas_share_the_memory(available: list[int], memory: int, num_groups: Any, expected: list[int]) -> None:
    assert group_quotas(torch.tensor(available), memory, num_groups).tolist() == expected


def test_class_balanced_buffer_shrinks_old_classes_to_a_prefix() -> None:
    buffer = ClassBalancedBuffer(12)
    buffer.update(offer(40, experience=0))  # classes 0, 1: 6 each
    first = {c: buffer.slots.position[buffer.slots.targets == c].tolist() for c in (0, 1)}
    assert [len(v) for v in first.values()] == [6, 6]
    buffer.update(offer(40, experience=1))  # classes 2, 3 arrive: 3 each
    for c in (0, 1):
        kept = buffer.slots.position[buffer.slots.targets == c].tolist()
        assert kept == first[c][:3]
    assert torch.bincount(buffer.slots.targets).tolist() == [3, 3, 3, 3]


def test_class_balanced_with_a_known_number_of_classes_reserves_their_share() -> None:
    buffer = ClassBalancedBuffer(20, total_num_classes=10)
    buffer.update(offer(40))
    assert torch.bincount(buffer.slots.targets).tolist() == [2, 2]
    with pytest.raises(ValueError, match="num_groups"):
        ParametricBuffer(20, num_groups=30)


def test_experience_balanced_buffer_balances_experiences() -> None:
    buffer = ExperienceBalancedBuffer(30)
    for e in range(3):
        buffer.update(offer(50, experience=e))
    assert torch.bincount(buffer.slots.experience).tolist() == [10, 10, 10]


def herding_reference(features: torch.Tensor, count: int) -> list[int]:
    f = torch.nn.functional.normalize(features.double(), dim=1)
    mu, chosen = f.mean(0), []
    for _ in range(count):
        best, best_distance = -1, float("inf")
        for i in range(len(f)):
            if i in chosen:
                continue
            distance = float(((mu - f[[*chosen, i]].mean(0)) ** 2).sum())
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return chosen


def test_herding_matches_the_greedy_definition() -> None:
    features = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    ranked = HerdingSelection().rank(10, 30, features, torch.Generator())
    assert ranked.tolist() == herding_reference(features, 10)


def test_herding_mean_approaches_the_class_mean_faster_than_random() -> None:
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(1)) + 3
    f = torch.nn.functional.normalize(features.double(), dim=1)
    herd = HerdingSelection().rank(10, 200, features, torch.Generator())
    rand = RandomSelection().rank(10, 200, None, torch.Generator().manual_seed(0))
    gap = lambda idx: float((f[idx].mean(0) - f.mean(0)).norm())  # noqa: E731
    assert gap(herd) < 0.3 * gap(rand)


def test_closest_to_centre_ranks_by_distance_to_the_mean() -> None:
    # normalised: the diagonal one is nearest the mean; the other two tie (stable order)
    features = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert ClosestToCenterSelection().rank(3, 3, features, torch.Generator()).tolist() == [2, 0, 1]


def test_feature_selection_needs_features() -> None:
    buffer = ClassBalancedBuffer(10, selection="herding")
    with pytest.raises(ValueError, match="features"):
        buffer.update(offer(20))
    buffer.update(offer(20), features=lambda c: torch.randn(len(c), 3, generator=torch.Generator().manual_seed(0)))
    assert len(buffer) == 10


def test_buffer_reads_its_samples_from_the_stream() -> None:
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)))
    buffer = ClassBalancedBuffer(20)
    for experience in dm.train_stream[:2]:
        buffer.update(Candidates.of_experience(experience))
    data = buffer.dataset(dm.train_stream)
    assert len(data) == 20
    for k in range(len(data)):
        x, y = data[k]
        e = int(buffer.slots.experience[k])  # one experience at a time, in slot order here
        original = dm.train_stream[e].dataset[int(buffer.slots.position[k])]
        assert torch.equal(x, original[0]) and int(y) == int(original[1])
    with_slots = buffer.dataset(dm.train_stream, with_slots=True)
    x, y, slot = with_slots.__getitems__([3, 17]).tensors
    assert torch.equal(buffer.slots.targets[slot], y)


def test_buffer_holds_indices_not_images() -> None:
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)))
    buffer = ReservoirBuffer(5000)
    for experience in dm.train_stream:
        buffer.update(Candidates.of_experience(experience))
    state = buffer.state_dict()
    size = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    # 4 int64 slot fields + one float64 key per sample: 40 bytes, whatever the image size
    assert size == 40 * len(buffer)
    assert sys.getsizeof(buffer.slots) < 1000


@pytest.mark.parametrize("make", [lambda: ReservoirBuffer(30), lambda: ClassBalancedBuffer(30)])
def test_state_round_trip_gives_the_same_buffer(make: Any) -> None:
    buffer = make()
    buffer.update(offer(50, experience=0), extras={"logits": torch.randn(50, 4)})
    restored = make()
    restored.load_state_dict(buffer.state_dict())
    assert restored.fingerprint() == buffer.fingerprint()
    assert torch.equal(restored.extras["logits"], buffer.extras["logits"])
    # and both evolve identically afterwards
    for b in (buffer, restored):
        b.update(offer(50, experience=1), extras={"logits": torch.ones(50, 4)})
    assert restored.fingerprint() == buffer.fingerprint()


def test_extras_follow_their_slots() -> None:
    buffer = ClassBalancedBuffer(10)
    candidates = offer(40)
    buffer.update(candidates, extras={"tag": candidates.position.float()})
    buffer.update(offer(40, experience=1), extras={"tag": offer(40, experience=1).position.float() + 1000})
    tag = buffer.extras["tag"]
    expected = buffer.slots.position.float() + 1000 * buffer.slots.experience
    assert torch.equal(tag, expected)
    with pytest.raises(ValueError, match="extras"):
        buffer.update(offer(5, experience=2))


def test_live_dataset_reads_the_buffer_as_it_is_now() -> None:
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)))
    buffer = ReservoirBuffer(50)
    view = buffer.live_dataset(dm.train_stream)
    assert len(view) == 50
    empty = view.__getitems__([0, 1, 2]).tensors
    assert empty[0].shape[0] == 0 and empty[0].shape[1:] == dm.train_stream[0].dataset[0][0].shape
    buffer.update(Candidates.of_experience(dm.train_stream[0]))
    _, y = view.__getitems__(list(range(50))).tensors
    assert len(y) == 50 and set(y.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ReservoirBuffer(0), "memory_size"),
        (lambda: ClassBalancedBuffer(-5), "memory_size"),
        (lambda: ParametricBuffer(10, groupby="colour"), "groupby"),
        (lambda: ClassBalancedBuffer(10, selection="best"), "selection"),
        (lambda: ReservoirBuffer(10, seed="x"), "seed"),
    ],
)
def test_bad_arguments_are_named(make: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_selection_by_name() -> None:
    assert isinstance(selection_strategy("herding"), HerdingSelection)
    assert isinstance(selection_strategy("closest"), ClosestToCenterSelection)
    with pytest.raises(ValueError, match="random"):
        selection_strategy("unknown")


def test_empty_buffer_has_no_dataset() -> None:
    dm = SplitDigits(num_experiences=5)
    with pytest.raises(ValueError, match="empty"):
        ReservoirBuffer(10).dataset(dm.train_stream)
    with pytest.raises(ValueError, match="memory_size"):
        ReservoirBuffer(2).load_state_dict(ReservoirBuffer(5).state_dict() | {"position": torch.arange(5)})


def test_class_balanced_random_is_a_reservoir_per_class() -> None:
    # one class offered in 20 updates of 10: every one of the 200 samples is kept with
    # probability 10/200, not biased towards the last updates
    counts = torch.zeros(200)
    for seed in range(1000):
        buffer = ClassBalancedBuffer(10, seed=seed)
        for chunk in range(20):
            buffer.update(offer(10, classes=1, start=10 * chunk))
        counts[buffer.slots.position] += 1
    assert abs(float(counts[:100].sum() - counts[100:].sum())) < 0.1 * 1000 * 10
    assert float(counts.max()) < 3 * 1000 * 10 / 200
