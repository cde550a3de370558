"""FlipCounts: negative and positive flips between consecutive evaluations of a test stream."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_cl.metrics.functional.counts import _class_ids, flip_counts
from lightning_cl.metrics.stream_confusion import _check_index, _positive_int


class FlipCounts(Metric):
    """Negative and positive flips per test experience between this evaluation and the previous one.

    A negative flip is a test sample the current model gets wrong and the previous model got
    right; a positive flip the reverse (Yan et al., CVPR 2021; Renate reports their rates). The
    metric keeps the previous evaluation's per-sample correctness as its *reference*:
    :meth:`update` compares each batch with the reference at the same position, and
    :meth:`commit`, called once the evaluation is over, makes the current correctness the
    reference of the next one. Samples are matched by position, so each evaluation must see the
    test samples in the same order.

    **Processes.** With ``UnrepeatedDistributedSampler(shuffle=False)`` (what
    :class:`~lightning_cl.StreamDataModule` uses under DDP) every rank sees the same deterministic
    shard of each test experience, in the same batches, at every evaluation. So each rank keeps
    the reference of *its own* shard (a buffer that is never synced, in the order of its batches)
    and only the flip counts are sum-reduced: exact counts with one small all-reduce, and no
    gathering of per-sample data. :meth:`reference_state` / :meth:`load_reference_state` save and
    restore the reference of the calling rank.

    The states ``negative``, ``positive`` and ``total`` (samples compared) are counts per
    experience; :func:`~lightning_cl.metrics.functional.negative_flip_rate` and
    :func:`~lightning_cl.metrics.functional.positive_flip_rate` turn them into rates. Before the
    first :meth:`commit` there is no reference and nothing is counted. Call :meth:`update`, not the
    metric itself (``forward``), so each batch is recorded once.

    Args:
        num_experiences: number of test experiences.

    Example:
        >>> metric = FlipCounts(num_experiences=2)
        >>> target = torch.tensor([0, 1, 1, 0])
        >>> metric.update(torch.tensor([0, 1, 0, 1]), target, experience=1)  # old model: right, right, wrong, wrong
        >>> metric.commit()
        >>> metric.reset()
        >>> metric.update(torch.tensor([0, 0, 1, 1]), target, experience=1)  # new model: right, wrong, right, wrong
        >>> metric.compute()
        {'negative': tensor([0, 1]), 'positive': tensor([0, 1]), 'total': tensor([0, 4])}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    negative: Tensor
    positive: Tensor
    total: Tensor

    def __init__(self, num_experiences: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.num_experiences = _positive_int(num_experiences, "num_experiences")
        for name in ("negative", "positive", "total"):
            self.add_state(name, torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")
        self._current: list[list[Tensor]] = [[] for _ in range(num_experiences)]
        self._offset = [0] * num_experiences
        self._reference: list[Tensor] | None = None

    @property
    def has_reference(self) -> bool:
        """Whether an earlier evaluation was committed (the same on every rank)."""
        return self._reference is not None

    def update(self, preds: Tensor, target: Tensor, experience: int) -> None:  # type: ignore[override]
        """Record a batch of test experience ``experience`` and count its flips against the reference.

        Args:
            preds: logits ``[B, C]`` (argmax taken) or predicted class ids ``[B]``.
            target: class ids ``[B]``.
            experience: index of the test experience.

        Raises:
            ValueError: if the experience now has more samples than in the reference evaluation.
        """
        _check_index(experience, self.num_experiences)
        correct = (_class_ids(preds, target) == target).reshape(-1)
        start = self._offset[experience]
        end = start + correct.numel()
        if self._reference is not None:
            reference = self._reference[experience]
            if end > reference.numel():
                raise ValueError(
                    f"`experience` {experience}: the previous evaluation saw {reference.numel()} samples of it "
                    f"on this process, this one sees at least {end}; flips compare the same test samples, so "
                    "each evaluation must see the same data in the same order (same test set, batches and "
                    "number of processes)."
                )
            if reference.device != correct.device:
                reference = self._reference[experience] = reference.to(correct.device)
            negative, positive = flip_counts(reference[start:end], correct)
            self.negative[experience] += negative
            self.positive[experience] += positive
            self.total[experience] += correct.numel()
        self._current[experience].append(correct)
        self._offset[experience] = end

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Same as :meth:`update` (the per-batch value of a flip count means nothing)."""
        self.update(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        """``{"negative", "positive", "total"}``, each ``[T]`` summed over processes (0-d when ``T == 1``)."""
        return {"negative": self.negative.clone(), "positive": self.positive.clone(), "total": self.total.clone()}

    def commit(self) -> None:
        """Make the correctness recorded since the last :meth:`reset` the reference of the next evaluation.

        Local (no communication). Call it after :meth:`compute`, once per evaluation.

        Raises:
            ValueError: if an experience had another number of samples than in the reference.
        """
        current = [
            torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.bool, device=self.negative.device)
            for chunks in self._current
        ]
        if self._reference is not None:
            for j, (old, new) in enumerate(zip(self._reference, current)):
                if old.numel() != new.numel():
                    raise ValueError(
                        f"`experience` {j}: {new.numel()} samples evaluated on this process, {old.numel()} in "
                        "the previous evaluation; flips compare the same test samples (did the test set, "
                        "limit_test_batches or the number of processes change?)."
                    )
        self._reference = current
        self._clear_current()

    def _clear_current(self) -> None:
        self._current = [[] for _ in range(self.num_experiences)]
        self._offset = [0] * self.num_experiences

    def reset(self) -> None:
        """Zero the counts and drop what this evaluation recorded; the reference stays."""
        super().reset()
        self._clear_current()

    def reference_state(self) -> dict[str, Any]:
        """The reference of this process: ``{"correct": [bool tensor per experience]}`` on the CPU
        (empty without a reference)."""
        if self._reference is None:
            return {}
        return {"correct": [r.detach().cpu().clone() for r in self._reference]}

    def load_reference_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`reference_state` of this process (an empty dict drops the reference).

        Raises:
            ValueError: if it holds another number of experiences.
        """
        correct = state.get("correct")
        if correct is None:
            self._reference = None
            return
        if len(correct) != self.num_experiences:
            raise ValueError(
                f"`state`: expected the reference of {self.num_experiences} experiences, got {len(correct)}."
            )
        self._reference = [torch.as_tensor(c).bool() for c in correct]
