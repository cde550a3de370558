"""Stream metrics as pure functions of the accuracy matrix.

``R`` has one row per trained experience (``R[i, j]``: accuracy on test experience ``j`` after
training experience ``i``) and one column per test experience. The functions accept the matrix
of a stream still in progress (rows ``0..i``); with all ``T`` rows they are the definitions of
Lopez-Paz & Ranzato (2017) and Chaudhry et al. (2018). A mean over no experience (forgetting
after the first experience, say) is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_matrix(R: Tensor) -> Tensor:
    if not isinstance(R, Tensor):
        raise TypeError(f"`R`: expected a torch.Tensor, got {type(R).__name__}.")
    if R.dim() != 2 or R.shape[0] < 1 or R.shape[1] < 1:
        raise ValueError(
            f"`R`: expected a non-empty 2-D accuracy matrix [rows, experiences], got shape {tuple(R.shape)}."
        )
    if R.shape[0] > R.shape[1] and R.shape[1] > 1:
        raise ValueError(
            f"`R`: expected at most as many rows (trained experiences) as columns (test experiences), "
            f"got shape {tuple(R.shape)}."
        )
    return R.double()


def _mean(values: Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0


def average_accuracy(R: Tensor) -> float:
    """Mean accuracy over every test experience after the last trained one: ``mean_j R[-1, j]``.

    Example:
        >>> round(average_accuracy(torch.tensor([[0.9, 0.1], [0.6, 0.8]])), 4)
        0.7
    """
    R = _check_matrix(R)
    return _mean(R[-1])


def forgetting(R: Tensor) -> float:
    """Average forgetting: ``mean_{j<i} (max_{l<i} R[l, j] - R[i, j])`` with ``i`` the last row.

    Example:
        >>> round(forgetting(torch.tensor([[0.9, 0.1, 0.0], [0.7, 0.8, 0.1], [0.5, 0.6, 0.9]])), 4)
        0.3
    """
    R = _check_matrix(R)
    i = R.shape[0] - 1
    if i == 0:
        return 0.0
    best = R[:i, :i].max(dim=0).values
    return _mean(best - R[i, :i])


def backward_transfer(R: Tensor) -> float:
    """Backward transfer: ``mean_{j<i} (R[i, j] - R[j, j])`` with ``i`` the last row (negative = forgetting).

    Example:
        >>> round(backward_transfer(torch.tensor([[0.9, 0.1], [0.6, 0.8]])), 4)
        -0.3
    """
    R = _check_matrix(R)
    i = R.shape[0] - 1
    if i == 0:
        return 0.0
    return _mean(R[i, :i] - torch.diagonal(R)[:i])


def forward_transfer(R: Tensor, initial: Tensor | None) -> float:
    """Forward transfer: ``mean_{0<j<=i} (R[j-1, j] - b[j])``, ``b`` the accuracy of the untrained model.

    Args:
        R: accuracy matrix.
        initial: ``b``, the accuracy on each test experience before any training.

    Raises:
        ValueError: if ``initial`` is missing (evaluate the model before the first experience,
            e.g. ``fit_stream(..., evaluate_initial=True)``) or has the wrong length.

    Example:
        >>> round(forward_transfer(torch.tensor([[0.9, 0.3], [0.6, 0.8]]), torch.tensor([0.1, 0.2])), 4)
        0.1
    """
    R = _check_matrix(R)
    if initial is None:
        raise ValueError(
            "`initial`: forward transfer needs the accuracy of the untrained model on every test "
            "experience; run an initial evaluation (fit_stream(..., evaluate_initial=True)), got None."
        )
    b = torch.as_tensor(initial).double().reshape(-1)
    if len(b) != R.shape[1]:
        raise ValueError(f"`initial`: expected {R.shape[1]} accuracies (one per test experience), got {len(b)}.")
    i = min(R.shape[0] - 1, R.shape[1] - 1)
    if i == 0:
        return 0.0
    j = torch.arange(1, i + 1)
    return _mean(R[j - 1, j] - b[j])
