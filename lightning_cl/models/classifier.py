"""Classifier: a plain LightningModule around a backbone (what a user would write)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``(x, y[, t])`` batches with any backbone.

    It knows nothing about continual learning: wrap it in
    :class:`~lightning_cl.ContinualModule` to train it over a stream. It logs nothing per step
    (ContinualModule logs ``train/loss`` per epoch).

    Args:
        backbone: the network, ``forward(x) -> logits``.
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

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.parameters())
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=self.hparams["momentum"])
