"""MIR: replay the memory samples that the coming update would hurt most."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.callbacks._replay import is_online, make_buffer, memory_view, mini_candidates
from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import forward_takes_task_labels
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def _per_sample_loss(model: nn.Module, params: dict[str, Tensor] | None, batch: list[Tensor]) -> Tensor:
    x = batch[0]
    args: tuple[Tensor, ...] = (x,)
    if forward_takes_task_labels(model):
        args = (x, batch[2] if len(batch) > 2 else torch.zeros(len(x), dtype=torch.long, device=x.device))
    logits = model(*args) if params is None else functional_call(model, params, args, strict=False)
    return F.cross_entropy(logits.float(), batch[1], reduction="none")


def interference_scores(model: nn.Module, virtual: dict[str, Tensor], batch: list[Tensor]) -> Tensor:
    """How much each sample's loss grows if ``model`` took the virtual step to ``virtual`` parameters."""
    with torch.no_grad():
        return _per_sample_loss(model, virtual, batch) - _per_sample_loss(model, None, batch)


class MIR(ContinualCallback):
    """Maximally Interfered Retrieval: replay the memory samples whose loss the update would raise most.

    Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars, "Online Continual Learning
    with Maximal Interfered Retrieval", NeurIPS 2019. At every step ``subsample`` memory samples
    are drawn alongside the batch; the gradient of the batch's loss gives a virtual SGD step
    (the optimizer's current learning rate); the ``memory_batch_size`` samples whose loss
    increases most under that step are replayed, their cross-entropy added to the loss.

    The memory is offered each experience's samples when it ends; in an online
    stream (:func:`~lightning_cl.benchmarks.online`), each mini-experience's samples when it
    ends instead, as Avalanche's ``MIRPlugin`` there. The subsample is then read from the memory
    as it is at each step (``num_workers=0`` sees every update; loader workers see the memory as
    at the start of the epoch).

    Args:
        memory_size: the most samples kept (a hard bound).
        subsample: memory samples scored per step.
        memory_batch_size: the most-interfered samples replayed per step.
        storage: the buffer's storage policy (see :class:`~lightning_cl.callbacks.Replay`).
        seed: seed of the memory's selection.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[MIR(memory_size=500, subsample=50)], logger=False)
    """

    def __init__(
        self,
        memory_size: int = 200,
        subsample: int = 200,
        memory_batch_size: int = 10,
        storage: str | Buffer = "class_balanced",
        seed: int = 0,
    ) -> None:
        for name, value in (("subsample", subsample), ("memory_batch_size", memory_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
        self.buffer = make_buffer(storage, memory_size, "random", seed, "MIR")
        self.memory_size = self.buffer.memory_size
        self.subsample = subsample
        self.memory_batch_size = memory_batch_size

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, subsample=self.subsample)

    @property
    def _key(self) -> str:
        return f"mir_{id(self)}"

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        memory = memory_view(self.buffer, datamodule)
        return {} if memory is None else {self._key: JointData(memory, self.subsample)}

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        memory = step.extra.get(self._key)
        if memory is None or len(memory[0]) == 0:
            return {}
        model = step.module.module
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(step.loss, list(params.values()), retain_graph=True, allow_unused=True)
        lr = float(step.module.trainer.optimizers[0].param_groups[0]["lr"])
        virtual = {
            name: p.detach() if g is None else p.detach() - lr * g for (name, p), g in zip(params.items(), grads)
        }
        scores = interference_scores(model, virtual, list(memory))
        top = torch.topk(scores, min(self.memory_batch_size, len(scores))).indices
        replay = [t[top] for t in memory]
        return {"mir": F.cross_entropy(step.module.predict_logits(replay).float(), replay[1])}

    # ------------------------------------------------------------------------------ memory
    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, mini: Experience) -> None:
        self.buffer.update(mini_candidates(pl_module.datamodule, mini))

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if not is_online(pl_module.datamodule):
            self.buffer.update(Candidates.of_experience(experience))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
