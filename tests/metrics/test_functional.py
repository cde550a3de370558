"""Stream metrics as pure functions of the accuracy matrix, against hand-computed values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_cl.metrics.functional import average_accuracy, backward_transfer, forgetting, forward_transfer

# R[i, j]: accuracy on test experience j after training experience i. The best accuracy on
# experience 0 comes after experience 1 (not on the diagonal), so forgetting != -BWT.
FULL = [
    [0.6, 0.1, 0.0],
    [0.8, 0.7, 0.2],
    [0.5, 0.4, 0.9],
]
INITIAL = [0.1, 0.0, 0.1]


def matrix(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_full_matrix() -> None:
    R, b = matrix(FULL), torch.tensor(INITIAL, dtype=torch.float64)
    # last row: (0.5 + 0.4 + 0.9) / 3 = 1.8 / 3
    assert average_accuracy(R) == pytest.approx(0.6)
    # j=0: max(0.6, 0.8) - 0.5 = 0.3; j=1: max(0.1, 0.7) - 0.4 = 0.3; mean 0.3
    assert forgetting(R) == pytest.approx(0.3)
    # j=0: 0.5 - 0.6 = -0.1; j=1: 0.4 - 0.7 = -0.3; mean -0.2
    assert backward_transfer(R) == pytest.approx(-0.2)
    # j=1: R[0, 1] - b[1] = 0.1 - 0.0 = 0.1; j=2: R[1, 2] - b[2] = 0.2 - 0.1 = 0.1; mean 0.1
    assert forward_transfer(R, b) == pytest.approx(0.1)


def test_partial_matrix() -> None:
    # the stream after 2 of its 3 experiences
    R, b = matrix(FULL[:2]), torch.tensor(INITIAL, dtype=torch.float64)
    # last row over every test experience: (0.8 + 0.7 + 0.2) / 3 = 1.7 / 3
    assert average_accuracy(R) == pytest.approx(1.7 / 3)
    # j=0: max(0.6) - 0.8 = -0.2 (experience 0 improved)
    assert forgetting(R) == pytest.approx(-0.2)
    # j=0: 0.8 - 0.6 = 0.2
    assert backward_transfer(R) == pytest.approx(0.2)
    # only j=1 has been reached: R[0, 1] - b[1] = 0.1 - 0.0 = 0.1
    assert forward_transfer(R, b) == pytest.approx(0.1)


def test_four_experiences_partial_three_rows() -> None:
    R = matrix(
        [
            [0.9, 0.2, 0.1, 0.3],
            [0.4, 0.8, 0.3, 0.2],
            [0.6, 0.5, 0.7, 0.4],
        ]
    )
    b = torch.tensor([0.25, 0.1, 0.2, 0.3], dtype=torch.float64)
    # (0.6 + 0.5 + 0.7 + 0.4) / 4 = 2.2 / 4
    assert average_accuracy(R) == pytest.approx(0.55)
    # j=0: max(0.9, 0.4) - 0.6 = 0.3; j=1: max(0.2, 0.8) - 0.5 = 0.3; mean 0.3
    assert forgetting(R) == pytest.approx(0.3)
    # j=0: 0.6 - 0.9 = -0.3; j=1: 0.5 - 0.8 = -0.3; mean -0.3
    assert backward_transfer(R) == pytest.approx(-0.3)
    # j=1: 0.2 - 0.1 = 0.1; j=2: 0.3 - 0.2 = 0.1; mean 0.1 (j=3 not reached yet)
    assert forward_transfer(R, b) == pytest.approx(0.1)


def test_single_row() -> None:
    R = matrix([[0.9, 0.3, 0.0]])
    # (0.9 + 0.3 + 0.0) / 3
    assert average_accuracy(R) == pytest.approx(0.4)
    assert forgetting(R) == 0.0
    assert backward_transfer(R) == 0.0
    assert forward_transfer(R, torch.tensor([0.1, 0.2, 0.3])) == 0.0


def test_joint_training_matrix_one_row_one_column() -> None:
    R = matrix([[0.75]])
    assert average_accuracy(R) == pytest.approx(0.75)
    assert forgetting(R) == 0.0
    assert backward_transfer(R) == 0.0
    assert forward_transfer(R, [0.1]) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [average_accuracy, forgetting, backward_transfer])
def test_float32_matrices_give_the_float64_values(fn: Callable[[Tensor], float]) -> None:
    R = matrix(FULL)
    assert fn(R.float()) == pytest.approx(fn(R), abs=1e-6)


# ------------------------------------------------------------------------------------ reference
def reference(R: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """The textbook definitions on a full T x T matrix, written as plain loops."""
    T = R.shape[0]
    acc = sum(R[T - 1, j] for j in range(T)) / T
    fgt = sum(max(R[i, j] for i in range(T - 1)) - R[T - 1, j] for j in range(T - 1)) / (T - 1)
    bwt = sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1)
    fwt = sum(R[j - 1, j] - b[j] for j in range(1, T)) / (T - 1)
    return acc, fgt, bwt, fwt


@pytest.mark.parametrize("T", [2, 4, 7])
def test_random_matrices_match_the_definitions(T: int) -> None:
    g = torch.Generator().manual_seed(T)
    R, b = torch.rand(T, T, generator=g, dtype=torch.float64), torch.rand(T, generator=g, dtype=torch.float64)
    expected = reference(R.numpy(), b.numpy())
    actual = (average_accuracy(R), forgetting(R), backward_transfer(R), forward_transfer(R, b))
    assert actual == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------- errors
def test_forward_transfer_needs_the_initial_evaluation() -> None:
    with pytest.raises(ValueError, match=r"`initial`: .*run an initial evaluation"):
        forward_transfer(matrix(FULL), None)


@pytest.mark.parametrize("length", [2, 4])
def test_forward_transfer_rejects_initial_of_the_wrong_length(length: int) -> None:
    with pytest.raises(
        ValueError, match=rf"`initial`: expected 3 accuracies \(one per test experience\), got {length}"
    ):
        forward_transfer(matrix(FULL), torch.zeros(length))


def metric_of(name: str) -> Callable[[Tensor], float]:
    if name == "forward_transfer":
        return lambda R: forward_transfer(R, torch.zeros(3))
    return {"average_accuracy": average_accuracy, "forgetting": forgetting, "backward_transfer": backward_transfer}[
        name
    ]


METRICS = ["average_accuracy", "forgetting", "backward_transfer", "forward_transfer"]


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("shape", [(3,), (1, 3, 3), (0, 3)], ids=["1d", "3d", "no-rows"])
def test_rejects_a_matrix_that_is_not_2d(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"`R`: expected a non-empty 2-D accuracy matrix"):
        metric_of(name)(torch.zeros(shape))


@pytest.mark.parametrize("name", METRICS)
def test_rejects_more_rows_than_columns(name: str) -> None:
    with pytest.raises(ValueError, match=r"`R`: expected at most as many rows .* got shape \(4, 3\)"):
        metric_of(name)(torch.zeros(4, 3))


@pytest.mark.parametrize("name", METRICS)
def test_rejects_a_list(name: str) -> None:
    with pytest.raises(TypeError, match=r"`R`: expected a torch\.Tensor, got list"):
        metric_of(name)(FULL)  # type: ignore[arg-type]
