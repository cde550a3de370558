"""ER-ACE: experience replay with an asymmetric cross-entropy on the incoming data."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.callbacks._replay import is_online, make_buffer, memory_view, mini_candidates
from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def asymmetric_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the classes present in ``targets`` only (the other logits are ignored).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, 5.0]])
        >>> float(asymmetric_cross_entropy(logits, torch.tensor([0])))  # class 2 is not in the batch
        0.0
    """
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    present[targets] = True
    return F.cross_entropy(logits.float().masked_fill(~present, -torch.inf), targets)


class ERACE(ContinualCallback):
    """ER-ACE: replay, where the incoming batch only competes among its own classes.

    Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky, "New Insights on Reducing Abrupt
    Representation Change in Online Continual Learning", ICLR 2022. The task loss is replaced by
    ``(ACE(current) + CE(memory)) / 2``: the incoming batch's cross-entropy is restricted to the
    classes present in it, so new classes do not push the logits of old classes down, while the
    memory batch (``memory_batch_size`` samples drawn alongside every batch) uses the full
    cross-entropy. As in Avalanche's ``ER_ACE``, each experience's samples are offered to the
    class-balanced memory when it *starts*, so the memory holds current samples too; without a
    memory the plain cross-entropy of the batch is used.

    Args:
        memory_size: the most samples kept (a hard bound).
        memory_batch_size: memory samples per batch (defaults to the datamodule's batch size).
        storage: the buffer's storage policy (see :class:`~lightning_cl.callbacks.Replay`).
        seed: seed of the memory's selection.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[ERACE(memory_size=500)], logger=False)
    """

    def __init__(
        self,
        memory_size: int = 200,
        memory_batch_size: int | None = None,
        storage: str | Buffer = "class_balanced",
        seed: int = 0,
    ) -> None:
        if memory_batch_size is not None and (
            isinstance(memory_batch_size, bool) or not isinstance(memory_batch_size, int) or memory_batch_size < 1
        ):
            raise ValueError(f"`memory_batch_size`: expected None or a positive integer, got {memory_batch_size!r}.")
        self.buffer = make_buffer(storage, memory_size, "random", seed, "ERACE")
        self.memory_size = self.buffer.memory_size
        self.memory_batch_size = memory_batch_size

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size)

    @property
    def _key(self) -> str:
        return f"er_ace_{id(self)}"

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if not is_online(pl_module.datamodule):
            self.buffer.update(Candidates.of_experience(experience))

    def on_mini_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, mini: Experience) -> None:
        self.buffer.update(mini_candidates(pl_module.datamodule, mini))

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        memory = memory_view(self.buffer, datamodule)
        if memory is None:
            return {}
        return {self._key: JointData(memory, self.memory_batch_size or datamodule.batch_size)}

    def task_loss(self, step: TrainingStep) -> Tensor | None:
        memory = step.extra.get(self._key)
        if memory is None or not len(memory[0]):
            return None
        current = asymmetric_cross_entropy(step.logits, step.batch[1])
        replayed = F.cross_entropy(step.module.predict_logits(memory).float(), memory[1])
        return (current + replayed) / 2

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
