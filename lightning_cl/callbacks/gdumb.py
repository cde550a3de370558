"""GDumb: a greedy class-balanced memory, and a model retrained from scratch on it alone."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import Dataset

from lightning_cl.buffers.base import Candidates
from lightning_cl.buffers.parametric import ClassBalancedBuffer
from lightning_cl.callbacks.from_scratch import FromScratch
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


class GDumb(ContinualCallback):
    """GDumb: keep a class-balanced memory; before each experience retrain from scratch on it.

    Prabhu, Torr & Dokania, "GDumb: A Simple Approach that Questions Our Progress in Continual
    Learning", ECCV 2020. When an experience starts its samples are offered to a
    :class:`~lightning_cl.buffers.ClassBalancedBuffer` (every class seen so far gets an equal
    share of ``memory_size``), the model is reset to its initial weights (as
    :class:`~lightning_cl.callbacks.FromScratch`) and the experience is trained on the memory
    only. GDumb therefore needs several epochs per experience: with one epoch it learns little
    (Avalanche: 0.118 on 1-epoch SplitMNIST, 0.97 in its published 10-epoch setting).

    Args:
        memory_size: the most samples kept (a hard bound).
        seed: seed of the memory's random selection.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[GDumb(memory_size=4400)], logger=False)
    """

    def __init__(self, memory_size: int = 200, seed: int = 0) -> None:
        self.buffer = ClassBalancedBuffer(memory_size, seed=seed)
        self.memory_size = self.buffer.memory_size
        self._reset = FromScratch()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size)

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self.buffer.update(Candidates.of_experience(experience))
        self._reset.on_experience_start(trainer, pl_module, experience)

    def train_dataset(self, datamodule: StreamDataModule, experience: Experience, dataset: Dataset) -> Dataset:
        return self.buffer.dataset(datamodule.train_stream)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "reset": self._reset.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
        self._reset.load_state_dict(state_dict.get("reset", {}))
