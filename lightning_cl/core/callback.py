"""The protocol through which continual-learning methods act on a stream.

A CL method is a :class:`ContinualCallback`, i.e. an ordinary Lightning ``Callback`` with a few
extra hooks that :class:`~lightning_cl.ContinualModule` and
:class:`~lightning_cl.StreamDataModule` call at the right moments. Lightning hooks keep their
usual meaning; the ones CL methods need most are listed here with why:

=============================  ==========================================================================
hook                            when, and what it is for
=============================  ==========================================================================
``on_experience_start``         in ``setup("fit")`` of the first ``fit`` of an experience: before the
                                optimizer is created and before DDP wraps the model. Adapt the model here
                                (grow heads, freeze parts): new parameters are optimised and synced.
``train_dataset``               when the experience's train loader is built: return the dataset to train
                                on (e.g. the experience plus earlier data). Called in callback order.
``joint_datasets``              extra data drawn *alongside* every batch (e.g. a replay memory): each
                                entry becomes its own loader, of the same number of batches.
``prepare_batch``               per step, before the user's ``training_step``: change the batch it sees.
``task_loss``                   per step, after the user's step: replace the task loss (at most one
                                callback may do so).
``loss_terms``                  per step: extra loss terms, added to the loss and logged as
                                ``train/<name>_loss``.
``on_before_optimizer_step``    (Lightning's) edit gradients: they are final, synced across processes and
                                unscaled under mixed precision there.
``on_experience_end``           after the last epoch of the experience (in ``on_train_end``), model on its
                                device: consolidate (buffers, importance, snapshots).
``eval_logits``                 per test batch of the stream evaluation: replace the model's logits (e.g.
                                iCaRL's nearest-mean-of-exemplars classifier). At most one callback may.
=============================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import lightning as L
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from lightning_cl.core.datamodule import StreamDataModule
    from lightning_cl.core.experience import Experience
    from lightning_cl.core.module import ContinualModule


class JointData(NamedTuple):
    """A dataset drawn alongside the current experience, ``batch_size`` samples per step."""

    dataset: Dataset
    batch_size: int


@dataclass
class TrainingStep:
    """What a CL method sees of one training step.

    Attributes:
        module: the :class:`~lightning_cl.ContinualModule` being trained.
        batch: the batch the user's ``training_step`` received.
        extra: batches of the ``joint_datasets`` loaders, by name.
        output: what the user's ``training_step`` returned.
        loss: the task loss (the user's, or a replacement from ``task_loss``).
        batch_idx: index of the batch in the epoch.
    """

    module: ContinualModule
    batch: Any
    extra: Mapping[str, Any]
    output: Any
    loss: Tensor
    batch_idx: int
    _logits: Tensor | None = field(default=None, repr=False)

    @property
    def logits(self) -> Tensor:
        """Logits of ``batch``: taken from the step's output dict (key ``"logits"``) when the user
        returns them, otherwise computed once with the model's ``forward``."""
        if self._logits is None:
            if isinstance(self.output, Mapping) and isinstance(self.output.get("logits"), Tensor):
                self._logits = self.output["logits"]
            else:
                self._logits = self.module.predict_logits(self.batch)
        return self._logits


def continual_callbacks(trainer: L.Trainer | None) -> list[ContinualCallback]:
    """The trainer's CL methods, in the order of ``Trainer(callbacks=[...])``."""
    if trainer is None:
        return []
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
    return [c for c in callbacks if isinstance(c, ContinualCallback)]


class ContinualCallback(L.Callback):
    """Base class of CL methods: a Lightning ``Callback`` plus the stream hooks.

    Every hook defaults to doing nothing, so a method overrides only what it changes.

    Example:
        >>> import torch
        >>> class L2ToZero(ContinualCallback):
        ...     '''A toy method: an L2 penalty on every weight.'''
        ...     def loss_terms(self, step):
        ...         return {"l2": 1e-4 * sum((p**2).sum() for p in step.module.parameters())}
    """

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        """The first ``fit`` of ``experience`` begins (before optimizers and the DDP wrap)."""

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        """Training on ``experience`` has finished (model still on its device)."""

    def train_dataset(self, datamodule: StreamDataModule, experience: Experience, dataset: Dataset) -> Dataset:
        """The dataset to train ``experience`` on; ``dataset`` is what earlier callbacks made of it."""
        return dataset

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        """Datasets to draw alongside each batch of ``experience``, by name."""
        return {}

    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        """The batch the user's ``training_step`` will see."""
        return batch

    def task_loss(self, step: TrainingStep) -> Tensor | None:
        """A replacement for the task loss, or ``None`` to keep it."""
        return None

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        """Terms added to the loss, by name (logged as ``train/<name>_loss``)."""
        return {}

    def eval_logits(self, pl_module: ContinualModule, batch: Any, logits: Tensor) -> Tensor | None:
        """Scores ``[B, C]`` to evaluate ``batch`` with instead of the model's ``logits``, or ``None``."""
        return None
