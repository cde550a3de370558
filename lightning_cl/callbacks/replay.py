"""Replay: rehearse a memory of earlier samples while training on the new ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import Dataset

from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.buffers.selection import SelectionStrategy
from lightning_cl.callbacks._replay import (
    FeatureExtractor,
    candidate_features,
    cat_batches,
    make_buffer,
    penultimate_features,
)
from lightning_cl.core.callback import ContinualCallback, JointData
from lightning_cl.core.data import ConcatDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule

BATCH_MODES = ("concat", "joint")


class Replay(ContinualCallback):
    """Experience replay: a bounded memory of past samples, trained on with the new experience.

    Rolnick, Ahuja, Schwarz, Lillicrap & Wayne, "Experience Replay for Continual Learning",
    NeurIPS 2019 (and Chaudhry et al., "On Tiny Episodic Memories in Continual Learning",
    2019). After each experience the buffer is offered all its samples and keeps what its
    storage policy and selection strategy decide; the buffer holds ``(experience, position)``
    slots, and the samples are read from the stream when needed (with its transforms).

    Two ways of mixing the memory in:

    * ``"concat"``: the memory joins the experience's training set (one shuffled loader);
    * ``"joint"`` (default, as Avalanche's ``ReplayPlugin``): every batch is the current batch
      followed by ``memory_batch_size`` memory samples drawn alongside it.

    Either way the user's ``training_step`` receives an ordinary ``(x, y[, t])`` batch.

    Args:
        memory_size: the most samples kept (a hard bound).
        storage: ``"experience_balanced"`` (default, as Avalanche), ``"class_balanced"``,
            ``"task_balanced"``, ``"reservoir"``, or a :class:`~lightning_cl.buffers.Buffer`.
        selection: ``"random"``, ``"herding"`` or ``"closest"`` (the latter two rank samples
            by their features, read by ``feature_extractor``).
        batch_mode: ``"joint"`` or ``"concat"``.
        memory_batch_size: memory samples per batch in joint mode (defaults to the
            datamodule's ``batch_size``).
        feature_extractor: ``(model, batch) -> [B, D]`` features for herding / closest; by
            default the input of the model's last ``nn.Linear``.
        seed: seed of the buffer's selection.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[Replay(memory_size=200)], logger=False)
    """

    def __init__(
        self,
        memory_size: int = 200,
        storage: str | Buffer = "experience_balanced",
        selection: str | SelectionStrategy = "random",
        batch_mode: str = "joint",
        memory_batch_size: int | None = None,
        feature_extractor: FeatureExtractor | None = None,
        seed: int = 0,
    ) -> None:
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"`batch_mode`: expected one of {list(BATCH_MODES)}, got {batch_mode!r}.")
        if memory_batch_size is not None and (
            isinstance(memory_batch_size, bool) or not isinstance(memory_batch_size, int) or memory_batch_size < 1
        ):
            raise ValueError(f"`memory_batch_size`: expected None or a positive integer, got {memory_batch_size!r}.")
        self.buffer = make_buffer(storage, memory_size, selection, seed, "Replay")
        self.memory_size = self.buffer.memory_size
        self.batch_mode = batch_mode
        self.memory_batch_size = memory_batch_size
        self.feature_extractor = feature_extractor or penultimate_features

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, batch_mode=self.batch_mode)

    # ---------------------------------------------------------------------------------- data
    def train_dataset(self, datamodule: StreamDataModule, experience: Experience, dataset: Dataset) -> Dataset:
        if self.batch_mode != "concat" or not len(self.buffer):
            return dataset
        return ConcatDataset([dataset, self.buffer.dataset(datamodule.train_stream)])

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        if self.batch_mode != "joint" or not len(self.buffer):
            return {}
        size = self.memory_batch_size or datamodule.batch_size
        return {self._key: JointData(self.buffer.dataset(datamodule.train_stream), size)}

    @property
    def _key(self) -> str:
        return f"replay_{id(self)}"

    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        memory = extra.get(self._key)
        return batch if memory is None else cat_batches(batch, memory)

    # ------------------------------------------------------------------------------ memory
    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        stream = pl_module.datamodule.train_stream
        features = candidate_features(pl_module.module, stream, self.feature_extractor)
        self.buffer.update(Candidates.of_experience(experience), features=features)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
