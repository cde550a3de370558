"""StreamAccuracy: per-experience accuracy counts against a plain numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_cl.metrics import StreamAccuracy

NUM_CLASSES = 5
# (experience, batch size): experiences interleaved and split over uneven batches
BATCHES = [(0, 7), (2, 3), (1, 16), (0, 5), (2, 11), (1, 1), (0, 9)]


def random_batches(seed: int) -> list[tuple[int, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for experience, size in BATCHES:
        logits = torch.randn(size, NUM_CLASSES, generator=g)
        target = torch.randint(0, NUM_CLASSES, (size,), generator=g)
        # make each batch right more often than chance, so a wrong count shows
        target[: size // 2] = logits[: size // 2].argmax(dim=1)
        batches.append((experience, logits, target))
    return batches


def reference(batches: list[tuple[int, Tensor, Tensor]], num_experiences: int) -> np.ndarray:
    correct, total = np.zeros(num_experiences), np.zeros(num_experiences)
    for experience, logits, target in batches:
        predicted = np.argmax(logits.numpy(), axis=1)
        correct[experience] += np.sum(predicted == target.numpy())
        total[experience] += len(target)
    with np.errstate(invalid="ignore"):
        return correct / total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("as_class_ids", [False, True], ids=["logits", "class-ids"])
def test_matches_reference(seed: int, as_class_ids: bool) -> None:
    batches = random_batches(seed)
    metric = StreamAccuracy(num_experiences=3)
    for experience, logits, target in batches:
        metric.update(logits.argmax(dim=1) if as_class_ids else logits, target, experience=experience)

    result = metric.compute()
    assert result.shape == (3,)
    np.testing.assert_allclose(result.numpy(), reference(batches, 3), rtol=0, atol=1e-12)
    assert metric.total.tolist() == [7 + 5 + 9, 16 + 1, 3 + 11]


def test_hand_counted() -> None:
    metric = StreamAccuracy(num_experiences=2)
    # argmax of the logits: 0, 1, 1 against targets 0, 0, 1: 2 right out of 3
    metric.update(torch.tensor([[2.0, 1.0], [0.0, 1.0], [-1.0, 3.0]]), torch.tensor([0, 0, 1]), experience=0)
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 1]), experience=1)  # 1 right out of 2
    assert metric.compute().tolist() == pytest.approx([2 / 3, 1 / 2])


def test_reset() -> None:
    metric = StreamAccuracy(num_experiences=2)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), experience=0)
    metric.update(torch.tensor([1]), torch.tensor([1]), experience=1)
    metric.reset()

    assert metric.correct.tolist() == [0, 0]
    assert metric.total.tolist() == [0, 0]
    metric.update(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 1, 0]), experience=1)
    result = metric.compute()
    assert math.isnan(result[0])
    assert float(result[1]) == pytest.approx(0.75)


def test_experience_never_updated_is_nan() -> None:
    metric = StreamAccuracy(num_experiences=3)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), experience=0)
    metric.update(torch.tensor([2]), torch.tensor([0]), experience=2)
    result = metric.compute()

    assert float(result[0]) == 1.0
    assert math.isnan(result[1])
    assert float(result[2]) == 0.0


@pytest.mark.parametrize("experience", [-1, 3, 10])
def test_rejects_an_experience_out_of_range(experience: int) -> None:
    metric = StreamAccuracy(num_experiences=3)
    with pytest.raises(ValueError, match=rf"`experience`: expected an index in \[0, 3\), got {experience}"):
        metric.update(torch.tensor([0]), torch.tensor([0]), experience=experience)
    assert metric.total.tolist() == [0, 0, 0]


def test_rejects_preds_of_the_wrong_shape() -> None:
    metric = StreamAccuracy(num_experiences=1)
    with pytest.raises(ValueError, match=r"`preds`: expected logits \[B, C\] or class ids \[B\] .* got shape \(3,\)"):
        metric.update(torch.tensor([0, 1, 0]), torch.tensor([0, 1]), experience=0)


@pytest.mark.parametrize("num_experiences", [0, -2, True, 2.0])
def test_rejects_a_bad_num_experiences(num_experiences: object) -> None:
    with pytest.raises(ValueError, match="`num_experiences`: expected a positive integer"):
        StreamAccuracy(num_experiences=num_experiences)  # type: ignore[arg-type]
