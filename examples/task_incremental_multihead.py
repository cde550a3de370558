"""Task-incremental learning: one output head per task, chosen by the task label of each sample.

    python examples/task_incremental_multihead.py [--smoke]

Batches are ``(x, y, t)``. A ``forward(x, task_labels)`` gets the labels in training and in the
stream evaluation; ``MultiHeadClassifier`` adds the head of a new task when its experience
starts, before the optimizer is built, and freezes the heads of the other tasks.
"""

import os
import sys

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits, task_incremental
from lightning_cl.models import MultiHeadClassifier

SMOKE = "--smoke" in sys.argv or os.environ.get("LIGHTNING_CL_SMOKE") == "1"


class MultiHeadNet(L.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())  # shared by all tasks
        self.heads = MultiHeadClassifier(in_features=hidden)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x), task_labels)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y, t = batch
        return F.cross_entropy(self(x, t), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # at every experience, so the new head is optimised too
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def main() -> None:
    # experience k is task k: 2 digits, relabelled 0 and 1 within the task; its batches carry t = k
    train, test = SplitDigits().load_datasets()
    datamodule = task_incremental(train, test, num_experiences=5, seed=0, batch_size=32)
    net = MultiHeadNet()
    model = ContinualModule(net)
    trainer = L.Trainer(
        max_epochs=1 if SMOKE else 5,
        limit_train_batches=1 if SMOKE else None,
        limit_test_batches=1 if SMOKE else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    result = fit_stream(trainer, model, datamodule)
    print(result.table())
    heads = net.heads.heads  # created by the stream: one per task seen
    print("outputs per task head:", {task: head.classifier.out_features for task, head in heads.items()})


if __name__ == "__main__":
    main()
