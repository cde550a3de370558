"""A-GEM: project the gradient so that the loss on a memory sample does not increase."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_cl.callbacks._replay import (
    PatternMemory,
    cat_batches,
    flat_grad,
    memory_gradient,
    trainable,
    write_projection,
)
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.data import _mix_seed
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def agem_projection(gradient: Tensor, reference: Tensor) -> Tensor:
    """``gradient`` minus its component against ``reference`` when they conflict (A-GEM, eq. 11).

    Example:
        >>> agem_projection(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])).tolist()
        [1.0, 0.0]
        >>> agem_projection(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])).tolist()
        [1.0, 1.0]
    """
    dot = torch.dot(gradient, reference)
    if dot >= 0:
        return gradient
    return gradient - dot / torch.dot(reference, reference).clamp(min=1e-30) * reference


class AGEM(ContinualCallback):
    """Averaged GEM: one constraint, on the average gradient of a memory sample.

    Chaudhry, Ranzato, Rohrbach & Elhoseiny, "Efficient Lifelong Learning with A-GEM", ICLR
    2019. After each experience ``patterns_per_experience`` random samples of it are stored. At
    every step, in ``on_before_optimizer_step`` (gradients final, synced and unscaled), the
    reference gradient ``g_ref`` of the loss on ``sample_size`` samples drawn from the whole
    memory is computed; if the step's gradient ``g`` conflicts with it (``g . g_ref < 0``) it
    is replaced by ``g - (g . g_ref / g_ref . g_ref) g_ref`` (in the parameters that the step's
    loss reaches; the others keep ``grad=None``, as in Avalanche). The memory sample is drawn from a
    generator seeded by ``(seed, global step)``: every rank draws the same one, and a resumed
    run the same as an uninterrupted one.

    Args:
        patterns_per_experience: samples stored per experience.
        sample_size: memory samples per reference gradient.
        seed: seed of the stored patterns and of the per-step draws.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[AGEM(patterns_per_experience=256)], logger=False)
    """

    def __init__(self, patterns_per_experience: int, sample_size: int = 64, seed: int = 0) -> None:
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"`sample_size`: expected a positive integer, got {sample_size!r}.")
        self.memory = PatternMemory(patterns_per_experience, seed, "AGEM")
        self.patterns_per_experience = patterns_per_experience
        self.sample_size = sample_size
        self.seed = seed

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            patterns_per_experience=self.patterns_per_experience, sample_size=self.sample_size
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if not len(self.memory) or not isinstance(pl_module, ContinualModule):
            return
        model = pl_module.module
        params = trainable(model)
        stream = pl_module.datamodule.train_stream
        device = params[0].device
        batches = [self.memory.batch(stream, e, device) for e in self.memory.experiences()]
        memory = batches[0]
        for batch in batches[1:]:
            memory = cat_batches(memory, batch)
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, trainer.global_step))
        pick = torch.randperm(len(memory[0]), generator=generator)[: self.sample_size].to(device)
        reference = memory_gradient(model, params, [t[pick] for t in memory])
        gradient = flat_grad(params)
        projected = agem_projection(gradient, reference)
        if projected is not gradient:
            write_projection(params, projected)

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self.memory.add(experience)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.memory.load_state_dict(state_dict.get("memory", {}))
