"""DER and DER++: replay that also matches the logits the model gave the stored samples."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.callbacks._common import check_number
from lightning_cl.callbacks._replay import is_online, logits_of, make_buffer, map_dataset, memory_view, mini_candidates
from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import probing, sample_batch
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule
from lightning_cl.models.incremental import GrowingLinear


def logit_matching(logits: Tensor, stored: Tensor) -> Tensor:
    """Mean squared error between ``logits`` and ``stored`` logits, on the entries that were stored.

    Stored logits are NaN where the model had no such output yet (a head that grew later).

    Example:
        >>> logit_matching(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[0.0, 2.0, float("nan")]])).item()
        0.5
    """
    width = min(logits.shape[-1], stored.shape[-1])
    logits, stored = logits[:, :width].float(), stored[:, :width].to(logits.device)
    valid = ~torch.isnan(stored)
    return ((logits - torch.nan_to_num(stored)) ** 2)[valid].mean()


def _mask_values(model: nn.Module) -> set[float]:
    return {m.mask_value for m in model.modules() if isinstance(m, GrowingLinear) and m.masking}


class DER(ContinualCallback):
    """Dark Experience Replay: replay with the model's own past logits as soft targets.

    Buzzega, Boschini, Porrello, Abati & Calderara, "Dark Experience for General Continual
    Learning: a Strong, Simple Baseline", NeurIPS 2020. Every batch is joined by a memory batch
    and the loss gains

    ``alpha * MSE(f(x_mem), z_mem) + beta * CE(f(x_mem), y_mem)``

    where ``z_mem`` are the logits stored with the sample: DER is ``beta=0``, DER++ ``beta > 0``.
    As in Avalanche's ``DER``, an experience's samples and their logits (from the model at the
    end of the experience) are offered to a class-balanced memory when the experience ends. The
    memory keeps slot indices plus the logits (``buffer.extras["logits"]``), never the images.
    In an online stream each mini-experience's samples and logits are stored when it ends.
    When the model grows outputs later, the missing entries of older logits are not matched,
    nor are the logits of units an :class:`~lightning_cl.models.IncrementalClassifier` still
    masked when they were stored.

    Args:
        memory_size: the most samples kept (a hard bound).
        alpha: weight of the logit matching.
        beta: weight of the memory's cross-entropy (DER++ when > 0).
        memory_batch_size: memory samples per batch (defaults to the datamodule's batch size).
        storage: the buffer's storage policy (see :class:`~lightning_cl.callbacks.Replay`).
        seed: seed of the memory's selection.

    Raises:
        TypeError: at the start of training, if the model's ``forward`` does not return logits
            ``[B, C]`` (there would be nothing to store).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[DER(memory_size=500, alpha=0.1, beta=0.5)], logger=False)
    """

    def __init__(
        self,
        memory_size: int = 200,
        alpha: float = 0.1,
        beta: float = 0.5,
        memory_batch_size: int | None = None,
        storage: str | Buffer = "class_balanced",
        seed: int = 0,
    ) -> None:
        self.alpha = check_number(alpha, "alpha")
        self.beta = check_number(beta, "beta")
        if memory_batch_size is not None and (
            isinstance(memory_batch_size, bool) or not isinstance(memory_batch_size, int) or memory_batch_size < 1
        ):
            raise ValueError(f"`memory_batch_size`: expected None or a positive integer, got {memory_batch_size!r}.")
        self.buffer = make_buffer(storage, memory_size, "random", seed, "DER")
        self.memory_size = self.buffer.memory_size
        self.memory_batch_size = memory_batch_size

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, alpha=self.alpha, beta=self.beta)

    @property
    def _key(self) -> str:
        return f"der_{id(self)}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ContinualModule):
            return
        experience = pl_module.datamodule.train_stream[pl_module.datamodule.current_experience]
        try:
            with probing(pl_module.module):
                pl_module.predict_logits(sample_batch(experience.dataset, pl_module.device))
        except TypeError as error:
            raise TypeError(f"DER stores and matches the model's logits: {error}") from error

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        memory = memory_view(self.buffer, datamodule, with_slots=True)
        if memory is None:
            return {}
        return {self._key: JointData(memory, self.memory_batch_size or datamodule.batch_size)}

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        memory = step.extra.get(self._key)
        if memory is None or not len(memory[0]):
            return {}
        batch, slots = memory[:-1], memory[-1]
        logits = step.module.predict_logits(batch)
        terms = {"der": self.alpha * logit_matching(logits, self.buffer.extras["logits"][slots.cpu()])}
        if self.beta:
            terms["der_ce"] = self.beta * F.cross_entropy(logits.float(), batch[1])
        return terms

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if not is_online(pl_module.datamodule):
            self._store(pl_module, Candidates.of_experience(experience), experience.dataset)

    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, mini: Experience) -> None:
        self._store(pl_module, mini_candidates(pl_module.datamodule, mini), mini.dataset)

    def _store(self, pl_module: ContinualModule, candidates: Candidates, dataset: Dataset) -> None:
        logits = map_dataset(pl_module.module, dataset, logits_of)
        for value in _mask_values(pl_module.module):
            # a masked unit (never trained) has no logit worth keeping: once trained it would be
            # pulled back to the mask value
            logits[logits == value] = float("nan")
        stored = self.buffer.extras.get("logits")
        if stored is not None and stored.shape[1] != logits.shape[1]:
            # the model grew outputs: older logits have no value for the new ones (NaN, not matched)
            width = max(stored.shape[1], logits.shape[1])
            self.buffer.extras["logits"] = F.pad(stored, (0, width - stored.shape[1]), value=float("nan"))
            logits = F.pad(logits, (0, width - logits.shape[1]), value=float("nan"))
        self.buffer.update(candidates, extras={"logits": logits})

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
