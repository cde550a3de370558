"""Models that change with the stream, and calling a model the way the stream evaluation does."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cl.core.experience import Experience


class DynamicModule(nn.Module):
    """A layer that adapts itself to each experience (grows outputs, adds a head or a column).

    :class:`~lightning_cl.ContinualModule` calls :meth:`adaptation` on every ``DynamicModule``
    inside the user's module when an experience starts: before the optimizer is created and
    before DDP wraps the model, so new parameters are optimised and synced. Before a stream
    evaluation it calls :meth:`eval_adaptation` with each test experience. A user who puts one in
    their own LightningModule gets it adapted with no extra code.
    """

    def adaptation(self, experience: Experience) -> None:
        """Adapt to ``experience`` (the train experience about to be trained)."""

    def eval_adaptation(self, experience: Experience) -> None:
        """Be able to evaluate ``experience`` of the test stream (e.g. grow outputs, kept masked).

        Called for every test experience when ``trainer.test`` starts; it must not make the
        model learn anything, and calling it twice must change nothing more.
        """


def forward_takes_task_labels(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes the task labels: a second positional argument or ``task_labels``."""
    params = inspect.signature(model.forward).parameters.values()
    if any(p.name == "task_labels" for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def forward_logits(model: nn.Module, batch: Any, takes_task_labels: bool | None = None) -> Tensor:
    """Logits of an ``(x, y[, t])`` batch: ``model(x, t)`` when the forward takes task labels, else ``model(x)``.

    CL methods call their teachers through this, so a teacher sees the same inputs as the student.

    Raises:
        TypeError: if the model does not return logits ``[B, C]``.
    """
    x = batch[0]
    if takes_task_labels is None:
        takes_task_labels = forward_takes_task_labels(model)
    if takes_task_labels:
        task_labels = batch[2] if len(batch) > 2 else torch.zeros(len(x), dtype=torch.long, device=x.device)
        logits = model(x, task_labels)
    else:
        logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = type(logits).__name__ if not isinstance(logits, Tensor) else f"shape {tuple(logits.shape)}"
        raise TypeError(f"{type(model).__name__}.forward: expected logits [B, C], got {got}.")
    return logits


def sample_batch(dataset: Sequence[Any] | Any, device: torch.device | str) -> list[Tensor]:
    """``dataset[0]`` as a batch of one on ``device``: what a check of the model's outputs feeds it."""
    return [torch.as_tensor(v).unsqueeze(0).to(device) for v in dataset[0]]


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """A forward that only looks: eval mode (BatchNorm statistics and dropout untouched), no gradients.

    Every submodule gets its own training flag back afterwards, also when the forward raises.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes.items():
            m.train(training)
