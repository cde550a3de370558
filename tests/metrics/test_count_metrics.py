"""The torchmetrics classes with sum-reduced count states, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_cl.metrics import FlipCounts, StreamConfusionMatrix, StreamLoss, StreamTopKAccuracy, TrainingCounts

NUM_CLASSES = 5
# (experience, batch size): experiences interleaved, uneven batches
BATCHES = [(0, 7), (2, 3), (1, 16), (0, 5), (2, 11), (1, 1), (0, 9)]


def random_batches(seed: int) -> list[tuple[int, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for experience, size in BATCHES:
        logits = torch.randn(size, NUM_CLASSES, generator=g)
        target = torch.randint(0, NUM_CLASSES, (size,), generator=g)
        target[: size // 2] = logits[: size // 2].argmax(dim=1)  # better than chance
        batches.append((experience, logits, target))
    return batches


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_matches_a_loop_reference(seed: int) -> None:
    batches = random_batches(seed)
    metric = StreamConfusionMatrix(num_experiences=3, num_classes=NUM_CLASSES)
    expected = np.zeros((3, NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for experience, logits, target in batches:
        metric.update(logits, target, experience)
        for t, p in zip(target.tolist(), logits.argmax(1).tolist()):
            expected[experience, t, p] += 1
    np.testing.assert_array_equal(metric.compute().numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_a_numpy_cross_entropy(seed: int) -> None:
    batches = random_batches(seed)
    metric = StreamLoss(num_experiences=3)
    sums, counts = np.zeros(3), np.zeros(3, dtype=np.int64)
    for experience, logits, target in batches:
        metric.update(logits, target, experience)
        sums[experience] -= log_softmax(logits.double().numpy())[np.arange(len(target)), target.numpy()].sum()
        counts[experience] += len(target)
    result = metric.compute()
    np.testing.assert_array_equal(result["count"].numpy(), counts)
    np.testing.assert_allclose(result["loss_sum"].numpy(), sums, rtol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_matches_a_loop_reference(top_k: int) -> None:
    batches = random_batches(2)
    metric = StreamTopKAccuracy(num_experiences=3, top_k=top_k)
    correct, total = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    for experience, logits, target in batches:
        metric.update(logits, target, experience)
        order = np.argsort(-logits.numpy(), axis=1, kind="stable")
        correct[experience] += sum(t in order[i, :top_k] for i, t in enumerate(target.tolist()))
        total[experience] += len(target)
    result = metric.compute()
    np.testing.assert_array_equal(result["correct"].numpy(), correct)
    np.testing.assert_array_equal(result["total"].numpy(), total)


def split_between_two_ranks(make: type, batches: list[tuple[int, Tensor, Tensor]], **kwargs: int) -> tuple:
    single, rank0, rank1 = make(**kwargs), make(**kwargs), make(**kwargs)
    for i, (experience, logits, target) in enumerate(batches):
        single.update(logits, target, experience)
        (rank0 if i % 2 else rank1).update(logits, target, experience)
    return single.compute(), rank0.compute(), rank1.compute()


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (StreamConfusionMatrix, {"num_experiences": 3, "num_classes": NUM_CLASSES}),
        (StreamTopKAccuracy, {"num_experiences": 3, "top_k": 2}),
        (StreamLoss, {"num_experiences": 3}),
    ],
    ids=["confusion", "top-k", "loss"],
)
def test_the_sum_of_shards_is_the_whole(make: type, kwargs: dict[str, int]) -> None:
    # what the sum all-reduce does: counts of disjoint shards add up to the single-process counts
    single, a, b = split_between_two_ranks(make, random_batches(3), **kwargs)
    if isinstance(single, dict):
        for key in single:
            torch.testing.assert_close(a[key] + b[key], single[key])
    else:
        assert torch.equal(a + b, single)


def test_confusion_matrix_hand_counted_and_reset() -> None:
    metric = StreamConfusionMatrix(num_experiences=2, num_classes=3)
    metric.update(torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]), experience=1)
    expected = torch.zeros(2, 3, 3, dtype=torch.long)
    expected[1, 0, 0] = expected[1, 1, 2] = expected[1, 2, 2] = 1
    assert torch.equal(metric.compute(), expected)
    metric.reset()
    assert int(metric.confusion.sum()) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: StreamConfusionMatrix(2, 3),
        lambda: StreamLoss(2),
        lambda: StreamTopKAccuracy(2, 1),
        lambda: FlipCounts(2),
    ],
    ids=["confusion", "loss", "top-k", "flips"],
)
@pytest.mark.parametrize("experience", [-1, 2])
def test_rejects_an_experience_out_of_range(make: object, experience: int) -> None:
    metric = make()  # type: ignore[operator]
    with pytest.raises(ValueError, match=rf"`experience`: expected an index in \[0, 2\), got {experience}"):
        metric.update(torch.zeros(1, 3), torch.tensor([0]), experience)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda v: StreamConfusionMatrix(v, 3), "num_experiences"),
        (lambda v: StreamConfusionMatrix(2, v), "num_classes"),
        (lambda v: StreamLoss(v), "num_experiences"),
        (lambda v: StreamTopKAccuracy(2, v), "top_k"),
        (lambda v: FlipCounts(v), "num_experiences"),
    ],
)
@pytest.mark.parametrize("value", [0, True, 2.0])
def test_rejects_bad_sizes(make: object, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"`{name}`: expected a positive integer, got {value!r}"):
        make(value)  # type: ignore[operator]


def test_loss_rejects_logits_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"`logits`: expected \[B, C\] with B = 2"):
        StreamLoss(1).update(torch.zeros(3, 4), torch.tensor([0, 1]), 0)


def test_training_counts_hand_counted() -> None:
    metric = TrainingCounts()
    metric.update(torch.tensor([0, 1]), logits=torch.tensor([[2.0, 0.0], [2.0, 0.0]]), loss=torch.tensor(0.5))
    metric.update(torch.tensor([1, 1, 0]), logits=torch.tensor([1, 1, 1]), loss=torch.tensor(2.0))
    metric.update(torch.tensor([0]))  # a sample counted without accuracy or loss
    result = metric.compute()
    # correct: 1 + 2; loss: 0.5 * 2 + 2.0 * 3
    assert (int(result["correct"]), int(result["total"]), float(result["loss_sum"])) == (3, 6, 7.0)


# ------------------------------------------------------------------------------------------ flips
def two_models(seed: int) -> tuple[list[tuple[int, Tensor, Tensor]], list[Tensor]]:
    """Batches of an "old" model and the "new" model's logits for the same samples."""
    batches = random_batches(seed)
    g = torch.Generator().manual_seed(seed + 100)
    new = [logits + 1.5 * torch.randn(logits.shape, generator=g) for _, logits, _ in batches]
    return batches, new


def flips_reference(batches: list[tuple[int, Tensor, Tensor]], new: list[Tensor]) -> np.ndarray:
    counts = np.zeros((3, 3), dtype=np.int64)  # negative, positive, total per experience
    for (experience, old, target), logits in zip(batches, new):
        for a, b, t in zip(old.argmax(1).tolist(), logits.argmax(1).tolist(), target.tolist()):
            counts[0, experience] += a == t and b != t
            counts[1, experience] += a != t and b == t
            counts[2, experience] += 1
    return counts


def run_two_evaluations(metric: FlipCounts, batches: list, new: list[Tensor]) -> dict[str, Tensor]:
    for experience, logits, target in batches:
        metric.update(logits, target, experience)
    assert not metric.has_reference and int(metric.compute()["total"].sum()) == 0  # nothing to compare with yet
    metric.commit()
    metric.reset()
    for (experience, _, target), logits in zip(batches, new):
        metric.update(logits, target, experience)
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flips_match_a_loop_reference(seed: int) -> None:
    batches, new = two_models(seed)
    metric = FlipCounts(num_experiences=3)
    result = run_two_evaluations(metric, batches, new)
    expected = flips_reference(batches, new)
    assert expected[:2].sum() > 0  # the models disagree somewhere, so a wrong pairing shows
    np.testing.assert_array_equal(np.stack([result[k].numpy() for k in ("negative", "positive", "total")]), expected)


def test_flips_reference_state_round_trip() -> None:
    batches, new = two_models(0)
    first = FlipCounts(num_experiences=3)
    for experience, logits, target in batches:
        first.update(logits, target, experience)
    first.commit()
    state = first.reference_state()
    assert [len(c) for c in state["correct"]] == [7 + 5 + 9, 16 + 1, 3 + 11]
    restored = FlipCounts(num_experiences=3)
    restored.load_reference_state(state)
    assert restored.has_reference
    for (experience, _, target), logits in zip(batches, new):
        restored.update(logits, target, experience)
    result = restored.compute()
    np.testing.assert_array_equal(result["negative"].numpy(), flips_reference(batches, new)[0])
    restored.load_reference_state({})
    assert not restored.has_reference
    with pytest.raises(ValueError, match="`state`: expected the reference of 2 experiences, got 3"):
        FlipCounts(2).load_reference_state(state)


def test_calling_the_flip_metric_records_each_batch_once() -> None:
    metric = FlipCounts(num_experiences=1)
    metric(torch.tensor([0, 1]), torch.tensor([0, 0]), 0)
    metric.commit()
    assert [len(c) for c in metric.reference_state()["correct"]] == [2]


def test_flips_refuse_other_test_data() -> None:
    metric = FlipCounts(num_experiences=2)
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 0)
    metric.commit()
    metric.reset()
    with pytest.raises(ValueError, match=r"`experience` 0: the previous evaluation saw 3 samples .* at least 4"):
        metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), 0)
    metric.reset()
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match=r"`experience` 0: 2 samples evaluated on this process, 3 in the previous"):
        metric.commit()


def test_flip_reset_keeps_the_reference_and_drops_the_current_evaluation() -> None:
    metric = FlipCounts(num_experiences=1)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), 0)  # right, wrong
    metric.commit()
    metric.update(torch.tensor([1, 1]), torch.tensor([0, 0]), 0)  # abandoned evaluation
    metric.reset()
    metric.update(torch.tensor([1, 0]), torch.tensor([0, 0]), 0)  # wrong, right
    result = metric.compute()
    assert (int(result["negative"]), int(result["positive"]), int(result["total"])) == (1, 1, 2)
