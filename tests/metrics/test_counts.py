"""Pure functions of counts (metrics/functional/counts.py) against hand-computed values and plain loops."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from lightning_cl.metrics.functional import (
    accuracy,
    class_accuracy,
    confusion_counts,
    experience_accuracy,
    flip_counts,
    mean_loss,
    negative_flip_rate,
    num_correct,
    positive_flip_rate,
    samples_per_second,
    seen_classes_accuracy,
)

# 4 samples, 4 classes. Ranking of the classes per sample (highest first):
# sample 0: 1, 2, 0, 3   target 2 -> top-1 no, top-2 yes
# sample 1: 0, 3, 1, 2   target 0 -> top-1 yes
# sample 2: 3, 2, 1, 0   target 0 -> top-3 no, top-4 yes
# sample 3: 2, 1, 0, 3   target 1 -> top-1 no, top-2 yes
LOGITS = torch.tensor(
    [
        [0.2, 0.9, 0.5, 0.1],
        [0.8, 0.3, 0.1, 0.4],
        [0.0, 0.2, 0.3, 0.7],
        [0.4, 0.6, 0.7, 0.1],
    ]
)
TARGET = torch.tensor([2, 0, 0, 1])


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1), (2, 3), (3, 3), (4, 4)])
def test_num_correct_top_k(top_k: int, expected: int) -> None:
    assert int(num_correct(LOGITS, TARGET, top_k=top_k)) == expected


def test_num_correct_takes_class_ids_for_top_1_and_breaks_ties_like_argmax() -> None:
    assert int(num_correct(torch.tensor([2, 0, 3, 1]), TARGET)) == 3  # all but sample 2
    # a tie between classes 0 and 1: argmax takes 0
    assert int(num_correct(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))) == 1
    assert int(num_correct(torch.tensor([[1.0, 1.0]]), torch.tensor([1]))) == 0


@pytest.mark.parametrize("top_k", range(1, 8))
def test_num_correct_matches_a_loop_reference(top_k: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    order = np.argsort(-logits.numpy(), axis=1)
    expected = sum(int(target[i]) in order[i, :top_k].tolist() for i in range(50))
    assert int(num_correct(logits, target, top_k=top_k)) == expected


@pytest.mark.parametrize("top_k", [0, -1, True, 1.5])
def test_num_correct_rejects_a_bad_top_k(top_k: object) -> None:
    with pytest.raises(ValueError, match="`top_k`: expected a positive integer"):
        num_correct(LOGITS, TARGET, top_k=top_k)  # type: ignore[arg-type]


def test_num_correct_rejects_top_k_above_the_classes_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"`top_k`: expected at most the number of classes \(4\), got 5"):
        num_correct(LOGITS, TARGET, top_k=5)
    with pytest.raises(ValueError, match=r"`logits`: expected logits \[B, C\] with B = 3"):
        num_correct(LOGITS, TARGET[:3], top_k=2)
    with pytest.raises(ValueError, match=r"`preds`: expected logits \[B, C\] or class ids \[B\]"):
        num_correct(LOGITS[:3], TARGET)


def test_accuracy_and_mean_loss_are_ratios_with_nan_for_nothing() -> None:
    result = accuracy(torch.tensor([3, 0, 2]), torch.tensor([4, 0, 8]))
    assert result.dtype == torch.float64
    assert result[0] == 0.75 and math.isnan(result[1]) and result[2] == 0.25
    assert float(mean_loss(6.0, 4)) == 1.5


def test_confusion_counts_hand_counted() -> None:
    # argmax of LOGITS: 1, 0, 3, 2; targets 2, 0, 0, 1
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[2, 1] = expected[0, 0] = expected[0, 3] = expected[1, 2] = 1
    assert torch.equal(confusion_counts(LOGITS, TARGET, num_classes=4), expected)
    assert torch.equal(confusion_counts(LOGITS.argmax(1), TARGET, num_classes=4), expected)
    # a larger matrix holds the same counts in its corner
    assert torch.equal(confusion_counts(LOGITS, TARGET, num_classes=6)[:4, :4], expected)


def test_confusion_counts_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(1)
    preds, target = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.tolist(), preds.tolist()):
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion_counts(preds, target, 5).numpy(), expected)


@pytest.mark.parametrize(
    ("preds", "target", "bad"),
    [([0, 4], [0, 1], "[4]"), ([0, 1], [5, 1], "[5]"), ([-1, 1], [0, 1], "[-1]")],
    ids=["prediction", "target", "negative"],
)
def test_confusion_counts_rejects_ids_outside_the_matrix(preds: list[int], target: list[int], bad: str) -> None:
    with pytest.raises(ValueError, match=rf"expected class ids in \[0, 4\) .* got {re.escape(bad)}"):
        confusion_counts(torch.tensor(preds), torch.tensor(target), num_classes=4)


def test_confusion_counts_rejects_a_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="`num_classes`: expected a positive integer, got 0"):
        confusion_counts(TARGET, TARGET, num_classes=0)


# two experiences, three classes; rows: true class, columns: prediction
CONFUSION = torch.tensor(
    [
        [[3, 1, 0], [1, 1, 0], [0, 0, 0]],  # experience 0: classes 0 and 1
        [[0, 0, 0], [0, 2, 1], [0, 2, 2]],  # experience 1: classes 1 and 2
    ]
)


def test_class_accuracy_adds_the_experiences() -> None:
    # class 0: 3/4; class 1: (1 + 2) / (2 + 3) = 3/5; class 2: 2/4
    assert class_accuracy(CONFUSION).tolist() == pytest.approx([0.75, 0.6, 0.5])
    # one matrix; a class with no sample has no accuracy
    result = class_accuracy(CONFUSION[0])
    assert result[:2].tolist() == pytest.approx([0.75, 0.5]) and math.isnan(result[2])


def test_experience_accuracy() -> None:
    # experience 0: (3 + 1) / 6; experience 1: (2 + 2) / 7
    assert experience_accuracy(CONFUSION).tolist() == pytest.approx([4 / 6, 4 / 7])
    assert float(experience_accuracy(CONFUSION[1])) == pytest.approx(4 / 7)


@pytest.mark.parametrize(
    ("seen", "expected"),
    [([0], 3 / 4), ([0, 1], (3 + 1 + 2) / (4 + 2 + 3)), ([0, 1, 2], (3 + 1 + 2 + 2) / 13), ([2, 0], (3 + 2) / 8)],
)
def test_seen_classes_accuracy(seen: list[int], expected: float) -> None:
    assert seen_classes_accuracy(CONFUSION, seen) == pytest.approx(expected)


def test_seen_classes_accuracy_counts_a_prediction_of_an_unseen_class_as_wrong() -> None:
    # class 1 of experience 1: 2 right, 1 predicted as the unseen class 2
    assert seen_classes_accuracy(CONFUSION[1], [1]) == pytest.approx(2 / 3)


def test_seen_classes_accuracy_errors() -> None:
    with pytest.raises(ValueError, match="`seen_classes`: expected at least one class id, got none"):
        seen_classes_accuracy(CONFUSION, [])
    with pytest.raises(ValueError, match=r"`seen_classes`: expected class ids in \[0, 3\), got \[0, 3\]"):
        seen_classes_accuracy(CONFUSION, [0, 3])
    with pytest.raises(ValueError, match=r"`confusion`: no test sample belongs to the seen classes \[2\]"):
        seen_classes_accuracy(CONFUSION[0], [2])


@pytest.mark.parametrize("fn", [class_accuracy, experience_accuracy])
def test_confusion_functions_reject_a_non_square_matrix(fn: object) -> None:
    with pytest.raises(ValueError, match="`confusion`: expected"):
        fn(torch.zeros(2, 3, 4))  # type: ignore[operator]


def test_flip_counts_hand_counted() -> None:
    previous = torch.tensor([True, True, False, False, True])
    current = torch.tensor([True, False, True, False, False])
    negative, positive = flip_counts(previous, current)
    assert (int(negative), int(positive)) == (2, 1)


def test_flip_counts_rejects_other_samples() -> None:
    with pytest.raises(ValueError, match=r"`current_correct`: expected the shape of `previous_correct` \(3,\)"):
        flip_counts(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_flip_rates() -> None:
    assert negative_flip_rate(torch.tensor(3), torch.tensor(40)) == 3 / 40
    assert positive_flip_rate(10, 40) == 0.25
    with pytest.raises(ValueError, match="`total`: expected a positive number of compared samples, got 0"):
        negative_flip_rate(0, 0)
    with pytest.raises(ValueError, match=r"`positive`: expected a count in \[0, 4\]"):
        positive_flip_rate(5, 4)


def test_samples_per_second() -> None:
    assert samples_per_second(1200, 0.5) == 2400.0
    assert samples_per_second(torch.tensor(30), 3.0) == 10.0
    with pytest.raises(ValueError, match="`seconds`: expected a positive duration, got 0"):
        samples_per_second(10, 0)
    with pytest.raises(ValueError, match="`num_samples`: expected a count >= 0, got -1"):
        samples_per_second(-1, 1.0)
