"""StreamLoss: the cross-entropy of each test experience as a (sum, count) pair, sum-reduced."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric

from lightning_cl.metrics.stream_confusion import _check_index, _positive_int


class StreamLoss(Metric):
    """Test loss per experience: the sum of per-sample cross-entropies and the number of samples.

    The stream evaluation does not call the user's ``test_step``, so the loss is the
    cross-entropy of the logits ``forward`` returns. Both states are reduced by sum (exact on any
    number of processes); :func:`~lightning_cl.metrics.functional.mean_loss` turns them into the
    mean per experience, and their totals into the mean over the whole stream. The sums are
    float32, like torchmetrics' own states, so they also live on devices without float64.

    Args:
        num_experiences: number of test experiences.

    Example:
        >>> metric = StreamLoss(num_experiences=2)
        >>> metric.update(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]), experience=1)
        >>> counts = metric.compute()
        >>> counts["count"], counts["loss_sum"]  # two samples of loss log(2) each
        (tensor([0, 2]), tensor([0.0000, 1.3863]))
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    loss_sum: Tensor
    count: Tensor

    def __init__(self, num_experiences: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.num_experiences = _positive_int(num_experiences, "num_experiences")
        self.add_state("loss_sum", torch.zeros(num_experiences), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_experiences, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, experience: int) -> None:  # type: ignore[override]
        """Add the cross-entropy of a batch of test experience ``experience``.

        Args:
            logits: ``[B, C]``.
            target: class ids ``[B]``.
            experience: index of the test experience.
        """
        _check_index(experience, self.num_experiences)
        if logits.dim() != 2 or logits.shape[0] != target.numel():
            raise ValueError(
                f"`logits`: expected [B, C] with B = {target.numel()} (the length of `target`), "
                f"got shape {tuple(logits.shape)}."
            )
        loss = F.cross_entropy(logits.float(), target.long(), reduction="sum")
        self.loss_sum[experience] += loss.detach().to(self.loss_sum.dtype)
        self.count[experience] += target.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"loss_sum": [T], "count": [T]}``, summed over processes (0-d when ``T == 1``: torchmetrics squeezes)."""
        return {"loss_sum": self.loss_sum.clone(), "count": self.count.clone()}
