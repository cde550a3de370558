"""Runs shared by the tests of the replay methods (Replay, DER, ER-ACE, GDumb)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.models import MLP, Classifier
from tests.conftest import quiet_trainer


def digits(batch_size: int = 32) -> SplitDigits:
    return SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=batch_size)


def digits_run(callbacks: list[L.Callback], epochs: int = 2, lr: float = 0.1, **trainer: Any) -> StreamResult:
    """Class-incremental SplitDigits (5 experiences of 2 classes), an MLP, SGD: the replay testbed."""
    torch.manual_seed(0)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(64,)), lr=lr))
    return fit_stream(quiet_trainer(max_epochs=epochs, callbacks=callbacks, **trainer), model, digits())


NAIVE_CACHE: dict[int, float] = {}


def naive_accuracy(epochs: int = 2) -> float:
    if epochs not in NAIVE_CACHE:
        NAIVE_CACHE[epochs] = digits_run([], epochs=epochs).average_accuracy
    return NAIVE_CACHE[epochs]


def checkpoint_state(callback: L.Callback, tmp_path: Path, epochs: int = 1) -> dict[str, Any]:
    """Train two experiences with ``callback``, save a checkpoint, load it with weights_only=True."""
    torch.manual_seed(0)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback], limit_train_batches=3)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1))
    dm = digits()
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    path = tmp_path / "replay.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["callbacks"][callback.state_key]
