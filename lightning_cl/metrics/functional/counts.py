"""Metrics as pure functions of counts: correct predictions, confusion matrices, flips, throughput.

The torchmetrics classes of :mod:`lightning_cl.metrics` keep these counts as sum-reduced states,
so every function here gives the same value on one process as on many. Ratios are float64;
a ratio over no sample is NaN where the input is a per-class or per-experience vector (a class
with no test sample has no accuracy), and an error where one number is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _class_ids(preds: Tensor, target: Tensor) -> Tensor:
    if preds.dim() == target.dim() + 1:
        preds = preds.argmax(dim=-1)
    if preds.shape != target.shape:
        raise ValueError(
            f"`preds`: expected logits [B, C] or class ids [B] matching `target` {tuple(target.shape)}, "
            f"got shape {tuple(preds.shape)}."
        )
    return preds


def _ratio(numerator: Tensor | float, denominator: Tensor | float) -> Tensor:
    return torch.as_tensor(numerator).double() / torch.as_tensor(denominator).double()


def num_correct(logits: Tensor, target: Tensor, top_k: int = 1) -> Tensor:
    """Number of samples whose target is among the ``top_k`` highest logits.

    With ``top_k=1`` the prediction is ``argmax`` (ties go to the lowest class id, as in
    :class:`~lightning_cl.metrics.StreamAccuracy`), and ``logits`` may also be class ids ``[B]``.

    Args:
        logits: logits ``[B, C]`` (or class ids ``[B]`` when ``top_k=1``).
        target: class ids ``[B]``.
        top_k: how many of the highest logits count as a hit.

    Returns:
        A 0-d integer tensor on the device of ``logits``.

    Raises:
        ValueError: if ``top_k`` is not a positive integer or exceeds the number of classes, or
            the shapes do not match.

    Example:
        >>> logits = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
        >>> num_correct(logits, torch.tensor([2, 0])), num_correct(logits, torch.tensor([2, 0]), top_k=2)
        (tensor(1), tensor(2))
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k`: expected a positive integer, got {top_k!r}.")
    if top_k == 1:
        return (_class_ids(logits, target) == target).sum()
    if logits.dim() != 2 or logits.shape[0] != target.numel():
        raise ValueError(
            f"`logits`: expected logits [B, C] with B = {target.numel()} for top-{top_k} accuracy, "
            f"got shape {tuple(logits.shape)}."
        )
    if top_k > logits.shape[1]:
        raise ValueError(f"`top_k`: expected at most the number of classes ({logits.shape[1]}), got {top_k}.")
    top = logits.topk(top_k, dim=1).indices
    return (top == target.reshape(-1, 1)).any(dim=1).sum()


def accuracy(correct: Tensor | float, total: Tensor | float) -> Tensor:
    """``correct / total`` in float64, elementwise; NaN where ``total`` is 0.

    Example:
        >>> accuracy(torch.tensor([3, 0, 1]), torch.tensor([4, 0, 2]))
        tensor([0.7500,    nan, 0.5000], dtype=torch.float64)
    """
    return _ratio(correct, total)


def mean_loss(loss_sum: Tensor | float, count: Tensor | float) -> Tensor:
    """Mean loss per sample from a sum of per-sample losses and their count; NaN where ``count`` is 0.

    Example:
        >>> mean_loss(torch.tensor([6.0, 1.0]), torch.tensor([4, 2]))
        tensor([1.5000, 0.5000], dtype=torch.float64)
    """
    return _ratio(loss_sum, count)


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix of one batch: ``M[t, p]`` = samples of true class ``t`` predicted as ``p``.

    Args:
        preds: logits ``[B, C]`` (their argmax is the prediction) or predicted class ids ``[B]``.
        target: class ids ``[B]``.
        num_classes: size of the matrix; every predicted and true class id must be below it.

    Returns:
        An integer tensor ``[num_classes, num_classes]`` on the device of ``preds``.

    Raises:
        ValueError: if a class id is outside ``[0, num_classes)`` or the shapes do not match.

    Example:
        >>> confusion_counts(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), num_classes=3)
        tensor([[1, 1, 0],
                [0, 1, 0],
                [0, 0, 1]])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes`: expected a positive integer, got {num_classes!r}.")
    preds = _class_ids(preds, target).reshape(-1).long()
    target = target.reshape(-1).long()
    valid = (preds >= 0) & (preds < num_classes) & (target >= 0) & (target < num_classes)
    # out-of-range ids go to one extra bin, checked below: no separate host sync for validation
    index = torch.where(valid, target * num_classes + preds, num_classes * num_classes)
    counts = torch.bincount(index, minlength=num_classes * num_classes + 1)
    if counts[-1] > 0:
        bad = torch.cat([preds[~valid], target[~valid]])
        raise ValueError(
            f"`preds`/`target`: expected class ids in [0, {num_classes}) (`num_classes` = {num_classes}), "
            f"got {sorted(set(bad.tolist()) - set(range(num_classes)))}."
        )
    return counts[:-1].reshape(num_classes, num_classes)


def _check_confusion(confusion: Tensor) -> Tensor:
    if not isinstance(confusion, Tensor):
        raise TypeError(f"`confusion`: expected a torch.Tensor, got {type(confusion).__name__}.")
    if confusion.dim() < 2 or confusion.shape[-1] != confusion.shape[-2]:
        raise ValueError(
            f"`confusion`: expected a confusion matrix [C, C] or a stack of them [..., C, C], "
            f"got shape {tuple(confusion.shape)}."
        )
    return confusion.reshape(-1, confusion.shape[-1], confusion.shape[-1]).sum(dim=0)


def class_accuracy(confusion: Tensor) -> Tensor:
    """Accuracy per true class: ``M[c, c] / sum_p M[c, p]``; NaN for a class with no sample.

    Args:
        confusion: a confusion matrix ``[C, C]`` (rows: true class, columns: prediction), or a
            stack ``[..., C, C]`` (e.g. one per experience) whose counts are added first.

    Returns:
        A float64 tensor ``[C]``.

    Example:
        >>> class_accuracy(torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
        tensor([0.7500,    nan, 0.5000], dtype=torch.float64)
    """
    M = _check_confusion(confusion)
    return _ratio(torch.diagonal(M), M.sum(dim=1))


def experience_accuracy(confusion: Tensor) -> Tensor:
    """Accuracy per experience from per-experience confusion matrices: ``trace(M_j) / sum(M_j)``.

    Args:
        confusion: ``[T, C, C]``, one confusion matrix per experience (a single ``[C, C]`` gives a
            0-d result).

    Returns:
        A float64 tensor ``[T]`` (NaN for an experience with no sample).

    Example:
        >>> M = torch.tensor([[[2, 0], [1, 1]], [[0, 0], [1, 3]]])
        >>> experience_accuracy(M)
        tensor([0.7500, 0.7500], dtype=torch.float64)
    """
    if not isinstance(confusion, Tensor) or confusion.dim() not in (2, 3):
        shape = tuple(confusion.shape) if isinstance(confusion, Tensor) else type(confusion).__name__
        raise ValueError(f"`confusion`: expected a tensor [T, C, C] or [C, C], got {shape}.")
    _check_confusion(confusion)
    correct = torch.diagonal(confusion, dim1=-2, dim2=-1).sum(dim=-1)
    return _ratio(correct, confusion.sum(dim=(-2, -1)))


def seen_classes_accuracy(confusion: Tensor, seen_classes: Iterable[int]) -> float:
    """Accuracy on the test samples of the classes seen so far.

    ``sum_{c in S} M[c, c] / sum_{c in S} sum_p M[c, p]``: the share of the samples whose true
    class is in ``S`` that are predicted right. The prediction is the argmax over all outputs, so
    a sample of a seen class predicted as an unseen class is wrong. (Avalanche's
    ``CumulativeAccuracy`` instead takes the argmax over the seen classes' logits only.)

    Args:
        confusion: ``[C, C]`` or a stack ``[..., C, C]`` (counts added).
        seen_classes: class ids trained on so far.

    Raises:
        ValueError: if ``seen_classes`` is empty, holds an id outside the matrix, or no test
            sample belongs to a seen class.

    Example:
        >>> M = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 2, 2]])
        >>> seen_classes_accuracy(M, [0, 1])  # (3 + 1) / (4 + 2)
        0.6666666666666666
    """
    M = _check_confusion(confusion)
    seen = sorted({int(c) for c in seen_classes})
    if not seen:
        raise ValueError("`seen_classes`: expected at least one class id, got none.")
    if seen[0] < 0 or seen[-1] >= M.shape[0]:
        raise ValueError(f"`seen_classes`: expected class ids in [0, {M.shape[0]}), got {seen}.")
    index = torch.tensor(seen, device=M.device)
    total = M[index].sum()
    if total == 0:
        raise ValueError(f"`confusion`: no test sample belongs to the seen classes {seen}.")
    return float(_ratio(torch.diagonal(M)[index].sum(), total))


def flip_counts(previous_correct: Tensor, current_correct: Tensor) -> tuple[Tensor, Tensor]:
    """Negative and positive flips between two models' per-sample correctness on the same samples.

    Args:
        previous_correct: bool ``[N]``, whether the old model got each sample right.
        current_correct: bool ``[N]``, the same for the new model, in the same sample order.

    Returns:
        ``(negative, positive)``: samples the new model gets wrong that the old one got right, and
        samples the new model gets right that the old one got wrong (0-d integer tensors).

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> flip_counts(torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False]))
        (tensor(1), tensor(1))
    """
    if previous_correct.shape != current_correct.shape:
        raise ValueError(
            f"`current_correct`: expected the shape of `previous_correct` {tuple(previous_correct.shape)} "
            f"(the same samples in the same order), got {tuple(current_correct.shape)}."
        )
    previous, current = previous_correct.bool(), current_correct.bool()
    return (previous & ~current).sum(), (~previous & current).sum()


def _flip_rate(flips: Tensor | int, total: Tensor | int, name: str) -> float:
    count, n = int(flips), int(total)
    if n < 1:
        raise ValueError(f"`total`: expected a positive number of compared samples, got {n}.")
    if not 0 <= count <= n:
        raise ValueError(f"`{name}`: expected a count in [0, {n}] (`total` = {n}), got {count}.")
    return count / n


def negative_flip_rate(negative: Tensor | int, total: Tensor | int) -> float:
    """Share of test samples the new model gets wrong and the old model got right.

    Yan et al., "Positive-Congruent Training: Towards Regression-Free Model Updates", CVPR 2021;
    reported by Renate between consecutive models of a stream.

    Args:
        negative: number of negative flips (summed over experiences and processes).
        total: number of test samples both models were evaluated on.

    Raises:
        ValueError: if ``total`` is not positive or ``negative`` is outside ``[0, total]``.

    Example:
        >>> negative_flip_rate(torch.tensor(3), torch.tensor(40))
        0.075
    """
    return _flip_rate(negative, total, "negative")


def positive_flip_rate(positive: Tensor | int, total: Tensor | int) -> float:
    """Share of test samples the new model gets right and the old model got wrong.

    Args:
        positive: number of positive flips.
        total: number of test samples both models were evaluated on.

    Raises:
        ValueError: if ``total`` is not positive or ``positive`` is outside ``[0, total]``.

    Example:
        >>> positive_flip_rate(10, 40)
        0.25
    """
    return _flip_rate(positive, total, "positive")


def samples_per_second(num_samples: Tensor | int, seconds: float) -> float:
    """Throughput: ``num_samples / seconds``.

    Raises:
        ValueError: if ``seconds`` is not positive or ``num_samples`` is negative.

    Example:
        >>> samples_per_second(1200, 0.5)
        2400.0
    """
    n = int(num_samples)
    if n < 0:
        raise ValueError(f"`num_samples`: expected a count >= 0, got {n}.")
    if not seconds > 0:
        raise ValueError(f"`seconds`: expected a positive duration, got {seconds!r}.")
    return n / float(seconds)
