"""Shared by the tests of GEM, A-GEM, MIR and iCaRL: a linear model whose gradients are written out by
hand, a recorder of the gradients Lightning hands to ``on_before_optimizer_step``, and small streams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import Dataset

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.benchmarks import Permute, SplitDigits, domain_incremental
from lightning_cl.benchmarks.digits import DIGITS_TEST_FRACTION, load_digits, stratified_split
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule
from tests.conftest import TinyClassifier, quiet_trainer


class LinearClassifier(L.LightningModule):
    """Logits ``x W' + b``: a model whose cross-entropy gradient has a closed form."""

    def __init__(self, in_features: int = 8, num_classes: int = 6, lr: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class WithSpareHead(LinearClassifier):
    """A linear classifier plus a head its loss never reaches, under SGD with momentum and weight decay
    (which would move the spare head if it were handed a zero gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(8, 6)

    def configure_optimizers(self) -> Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)


def softmax_by_hand(logits: Tensor) -> Tensor:
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def ce_gradient(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The gradient of the mean cross-entropy of ``x W' + b`` w.r.t. ``(W, b)``, flattened in that order.

    Written out: ``dL/dlogits = (softmax - onehot) / N``, so ``dL/dW = delta' x`` and ``dL/db = sum(delta)``.
    """
    x, weight, bias = x.double(), weight.double(), bias.double()
    onehot = torch.zeros(len(y), len(bias), dtype=torch.float64)
    onehot[torch.arange(len(y)), y] = 1.0
    delta = (softmax_by_hand(x @ weight.T + bias) - onehot) / len(x)
    return torch.cat([(delta.T @ x).reshape(-1), delta.sum(0)])


def ce_by_hand(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy of ``x W' + b``: ``-log softmax`` at the label, written out."""
    logits = x.double() @ weight.double().T + bias.double()
    return -torch.log(softmax_by_hand(logits)[torch.arange(len(y)), y])


class GradientRecorder(L.Callback):
    """What ``on_before_optimizer_step`` sees at every step: the batch, the weights and the gradients.

    Placed before a gradient-editing method in ``Trainer(callbacks=[...])`` it records the raw
    gradient; placed after, the edited one (Lightning calls the callbacks in list order).
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._batch: list[Tensor] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = [t.detach().clone() for t in batch]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        assert isinstance(pl_module, ContinualModule)
        self.steps.append(
            {
                "experience": pl_module.datamodule.current_experience,
                "global_step": trainer.global_step,
                "batch": self._batch,
                "params": [p.detach().clone() for p in pl_module.module.parameters()],
                "grad": torch.cat([p.grad.reshape(-1).double() for p in pl_module.module.parameters()]),  # type: ignore[union-attr]
            }
        )


def samples(dataset: Dataset, positions: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
    """The inputs and labels of ``dataset`` at ``positions``, stacked (read one by one)."""
    items = [dataset[int(i)] for i in positions]
    return torch.stack([torch.as_tensor(item[0]) for item in items]), torch.stack(
        [torch.as_tensor(item[1]) for item in items]
    )


def digits_run(
    callbacks: list[Any],
    epochs: int = 3,
    lr: float = 0.1,
    hidden: int = 32,
    seed: int = 0,
    dm: StreamDataModule | None = None,
) -> StreamResult:
    """A seeded run over class-incremental SplitDigits (5 experiences of 2 classes, classes in order)."""
    torch.manual_seed(seed)
    model = ContinualModule(TinyClassifier(in_features=64, num_classes=10, lr=lr, hidden=hidden))
    if dm is None:
        dm = SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=32)
    return fit_stream(quiet_trainer(max_epochs=epochs, callbacks=callbacks), model, dm, evaluate_initial=False)


def permuted_digits(num_experiences: int = 4, batch_size: int = 32) -> StreamDataModule:
    """PermutedMNIST in small: the 8x8 digits under a fixed pixel permutation per experience (the first
    the identity), one 10-way domain-incremental problem."""
    images, targets = load_digits()
    train, test = stratified_split(targets, DIGITS_TEST_FRACTION, seed=0)
    x = images.float().div(16).view(-1, 64)
    generator = torch.Generator().manual_seed(0)
    permutations = [torch.arange(64)] + [torch.randperm(64, generator=generator) for _ in range(num_experiences - 1)]
    return domain_incremental(
        InMemoryDataset(x[train], targets[train]),
        InMemoryDataset(x[test], targets[test]),
        [Permute(p) for p in permutations],
        batch_size=batch_size,
    )


def checkpointing_trainer(path: Path, callbacks: list[Any], max_epochs: int = 2) -> L.Trainer:
    """A quiet Trainer that saves a checkpoint at the end of every epoch (``epoch={n}.ckpt``)."""
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[saver, *callbacks])
