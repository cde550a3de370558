"""Classifier: a plain LightningModule around a backbone (what a user would write)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl.core.dynamic import forward_takes_task_labels


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``(x, y[, t])`` batches with any backbone.

    It knows nothing about continual learning: wrap it in
    :class:`~lightning_cl.ContinualModule` to train it over a stream. It logs nothing per step
    (ContinualModule logs ``train/loss`` per epoch).

    Args:
        backbone: the network, ``forward(x) -> logits``, or ``forward(x, task_labels)`` for a
            multi-head network (e.g. :class:`~lightning_cl.models.MultiHeadMLP`), which then
            receives the task labels of ``(x, y, t)`` batches.
        lr: learning rate of the default SGD optimizer.
        momentum: momentum of the default SGD optimizer.
        optimizer: an optimizer factory (``OptimizerCallable``, e.g. from the CLI) used instead
            of SGD; called anew at every experience.

    Example:
        >>> from lightning_cl.models import MLP
        >>> model = Classifier(MLP(64, 10), lr=0.05)
    """

    def __init__(
        self, backbone: nn.Module, lr: float = 0.05, momentum: float = 0.0, optimizer: OptimizerCallable | None = None
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone`: expected a torch.nn.Module, got {type(backbone).__name__}.")
        if lr <= 0:
            raise ValueError(f"`lr`: expected a positive learning rate, got {lr!r}.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        # a multi-head backbone (forward(x, task_labels)) gets the batch's task labels
        self._backbone_takes_task_labels = forward_takes_task_labels(backbone)

    def forward(self, x: Tensor, task_labels: Tensor | None = None) -> Tensor:
        if self._backbone_takes_task_labels:
            if task_labels is None:
                task_labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
            return self.backbone(x, task_labels)
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0], batch[2] if len(batch) > 2 else None), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.parameters())
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=self.hparams["momentum"])
