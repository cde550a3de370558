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
    is_online,
    make_buffer,
    memory_view,
    mini_candidates,
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

    Either way the user's ``training_step`` receives an ordinary ``(x, y[, t])`` batch. In an
    online stream (:func:`~lightning_cl.benchmarks.online`) the memory is offered each
    mini-experience's samples when it ends, and joint batches read it as it is at each step
    (concat mode cannot change an online pass).

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
        memory = memory_view(self.buffer, datamodule) if self.batch_mode == "joint" else None
        if memory is None:
            return {}
        return {self._key: JointData(memory, self.memory_batch_size or datamodule.batch_size)}

    @property
    def _key(self) -> str:
        return f"replay_{id(self)}"

    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        memory = extra.get(self._key)
        return batch if memory is None or not len(memory[0]) else cat_batches(batch, memory)

    # ------------------------------------------------------------------------------ memory
    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if not is_online(pl_module.datamodule):
            self._update(pl_module, Candidates.of_experience(experience))

    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, mini: Experience) -> None:
        self._update(pl_module, mini_candidates(pl_module.datamodule, mini))

    def _update(self, pl_module: ContinualModule, candidates: Candidates) -> None:
        stream = pl_module.datamodule.train_stream
        self.buffer.update(candidates, features=candidate_features(pl_module.module, stream, self.feature_extractor))

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
