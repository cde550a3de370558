"""iCaRL: herding exemplars, distillation, and a nearest-mean-of-exemplars classifier."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from lightning_cl.buffers.base import Candidates
from lightning_cl.buffers.parametric import ClassBalancedBuffer
from lightning_cl.callbacks._common import load_teacher, place_teacher, snapshot, teacher_state
from lightning_cl.callbacks._replay import FeatureExtractor, candidate_features, map_dataset, penultimate_features
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.data import ConcatDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import forward_logits, probing, sample_batch
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def icarl_targets(targets: Tensor, num_outputs: int, old_classes: Tensor, old_logits: Tensor | None) -> Tensor:
    """iCaRL's binary targets: one-hot labels, with the old model's sigmoid outputs for old classes.

    Example:
        >>> icarl_targets(torch.tensor([2]), 3, torch.tensor([0]), torch.tensor([[0.0, 5.0, 5.0]])).tolist()
        [[0.5, 0.0, 1.0]]
    """
    result = F.one_hot(targets, num_outputs).float()
    if old_logits is not None and len(old_classes):
        result[:, old_classes] = torch.sigmoid(old_logits[:, old_classes].float())
    return result


def nearest_mean_scores(features: Tensor, means: Tensor, has_mean: Tensor) -> Tensor:
    """Scores of the nearest-mean-of-exemplars classifier: minus the squared distance of the
    L2-normalised ``features`` to each class mean (``-inf`` for classes without exemplars).

    Example:
        >>> means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> nearest_mean_scores(torch.tensor([[3.0, 0.0]]), means, torch.tensor([True, True])).tolist()
        [[0.0, -2.0]]
    """
    f = F.normalize(features.float(), dim=1)
    # unit vectors: |f - m|^2 = 2 - 2 f.m
    scores = 2 * f @ means.to(f.device, f.dtype).T - 2
    return scores.masked_fill(~has_mean.to(f.device), -torch.inf)


class ICaRL(ContinualCallback):
    """iCaRL: class-incremental learning with exemplars chosen by herding.

    Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and Representation
    Learning", CVPR 2017. Three parts:

    * **exemplars**: after each experience a class-balanced memory of ``memory_size`` samples
      is chosen by herding on the L2-normalised features (every class seen so far gets an equal
      share; older classes keep a prefix of their herding order); the next experience trains on
      its data plus the exemplars;
    * **distillation**: the task loss is replaced by a binary cross-entropy over the outputs of
      the classes seen so far, whose targets are the one-hot labels for the new classes and the
      previous model's sigmoid outputs for the old ones;
    * **nearest-mean-of-exemplars**: at evaluation each sample goes to the class whose
      exemplars' mean feature is nearest (scores ``-distance**2``; the model's own logits only
      before any exemplars exist).

    Features are read by ``feature_extractor``; by default the input of the model's last
    ``nn.Linear`` (the classifier), so any model with a linear classifier works.

    Args:
        memory_size: the most exemplars kept (a hard bound), shared equally by the classes.
        feature_extractor: ``(model, batch) -> [B, D]`` features.
        seed: seed of the memory.

    Raises:
        TypeError: at the start of training, if the model has no ``nn.Linear`` classifier whose
            input can be read and no ``feature_extractor`` was given, or does not return logits.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[ICaRL(memory_size=2000)], logger=False)
    """

    def __init__(
        self, memory_size: int = 2000, feature_extractor: FeatureExtractor | None = None, seed: int = 0
    ) -> None:
        self.buffer = ClassBalancedBuffer(memory_size, selection="herding", seed=seed)
        self.memory_size = self.buffer.memory_size
        self.feature_extractor = feature_extractor or penultimate_features
        self.class_means = torch.zeros(0, 0)
        self.has_mean = torch.zeros(0, dtype=torch.bool)
        self._teacher: nn.Module | None = None
        self._pending: dict[str, Tensor] | None = None
        self._old_classes = torch.zeros(0, dtype=torch.long)
        self._seen_classes = torch.zeros(0, dtype=torch.long)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size)

    # ------------------------------------------------------------------------------ training
    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        stream = pl_module.datamodule.train_stream
        self._old_classes = torch.tensor(stream.previous_classes(experience.index), dtype=torch.long)
        self._seen_classes = torch.tensor(stream.classes_seen_so_far(experience.index), dtype=torch.long)
        self._teacher = snapshot(pl_module.module) if experience.index > 0 else None
        self._pending = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ContinualModule):
            return
        dm = pl_module.datamodule
        sample = sample_batch(dm.train_stream[dm.current_experience].dataset, pl_module.device)
        try:
            with probing(pl_module.module):
                self.feature_extractor(pl_module.module, sample)
        except TypeError as error:
            raise TypeError(f"ICaRL needs the model's features and logits: {error}") from error

    def train_dataset(self, datamodule: StreamDataModule, experience: Experience, dataset: Dataset) -> Dataset:
        if not len(self.buffer):
            return dataset
        return ConcatDataset([dataset, self.buffer.dataset(datamodule.train_stream)])

    def task_loss(self, step: TrainingStep) -> Tensor | None:
        logits = step.logits
        old_logits = None
        if len(self._old_classes) and (self._teacher is not None or self._pending is not None):
            self._teacher = place_teacher(self._teacher, self._pending, step.module.module, "ICaRL", "old model")
            self._pending = None
            with torch.no_grad():
                old_logits = forward_logits(self._teacher, step.batch)
        targets = icarl_targets(step.batch[1], logits.shape[-1], self._old_classes, old_logits)
        seen = self._seen_classes.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits[:, seen].float(), targets[:, seen])

    # ------------------------------------------------------------------------------ exemplars
    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        model, stream = pl_module.module, pl_module.datamodule.train_stream
        self.buffer.update(
            Candidates.of_experience(experience), features=candidate_features(model, stream, self.feature_extractor)
        )
        features = F.normalize(map_dataset(model, self.buffer.dataset(stream), self.feature_extractor), dim=1)
        targets = self.buffer.slots.targets[self._dataset_order()]
        num_classes = int(targets.max()) + 1
        means = torch.zeros(num_classes, features.shape[1])
        means.index_add_(0, targets, features)
        counts = torch.bincount(targets, minlength=num_classes)
        self.has_mean = counts > 0
        self.class_means = F.normalize(means / counts.clamp(min=1).unsqueeze(1), dim=1)
        self._teacher, self._pending = None, None

    def _dataset_order(self) -> Tensor:
        experience = self.buffer.slots.experience
        return torch.cat([(experience == e).nonzero().squeeze(1) for e in torch.unique(experience)])

    def eval_logits(self, pl_module: ContinualModule, batch: Any, logits: Tensor) -> Tensor | None:
        if not bool(self.has_mean.any()):
            return None
        features = self.feature_extractor(pl_module.module, batch)
        width = max(logits.shape[-1], len(self.has_mean))
        means = F.pad(self.class_means, (0, 0, 0, width - len(self.has_mean)))
        has_mean = F.pad(self.has_mean, (0, width - len(self.has_mean)))
        return nearest_mean_scores(features, means, has_mean)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "class_means": self.class_means.clone(),
            "has_mean": self.has_mean.clone(),
            "old_classes": self._old_classes.clone(),
            "seen_classes": self._seen_classes.clone(),
            **teacher_state(self._teacher, self._pending),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
        self.class_means = torch.as_tensor(state_dict.get("class_means", torch.zeros(0, 0)))
        self.has_mean = torch.as_tensor(state_dict.get("has_mean", torch.zeros(0, dtype=torch.bool)))
        self._old_classes = torch.as_tensor(state_dict.get("old_classes", torch.zeros(0, dtype=torch.long)))
        self._seen_classes = torch.as_tensor(state_dict.get("seen_classes", torch.zeros(0, dtype=torch.long)))
        self._teacher, self._pending = None, load_teacher(state_dict)
