"""LFL: Less-forgetting Learning (Jung et al.)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl.callbacks._common import (
    check_length,
    check_weight,
    load_teacher,
    place_teacher,
    snapshot,
    teacher_state,
    weight_at,
)
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


class LFL(ContinualCallback):
    """Less-forgetting Learning: keep the features of new data close to the old model's, freeze the classifier.

    Jung, Ju, Jung & Kim, "Less-forgetting Learning in Deep Neural Networks", arXiv:1607.00122,
    2016.

    When experience ``k >= 1`` starts, LFL takes a frozen copy of the user's module (the old
    model: ``copy.deepcopy``, eval mode, ``requires_grad=False``) and freezes the module's
    ``classifier`` (``requires_grad=False``, before the optimizer is created and before the DDP
    wrap; a run resumed mid-experience freezes it again in ``setup``), so the decision
    boundaries stay those of the first experience. Every training step then adds the loss term
    ``"lfl"`` (logged as ``train/lfl_loss``)::

        lambda_e * mean((features(x) - old.features(x)) ** 2)

    on the current batch's inputs ``x`` (``F.mse_loss``, the mean over batch and feature
    dimensions, as Avalanche's ``LFLPlugin``). The student's features are computed in the
    model's training mode (Avalanche switches the student to eval mode for them, which also
    changes the rest of its training step); the old model runs in eval mode, without gradients.
    The features cost one more forward of the feature extractor per step.

    The model must expose ``features(x)`` (a method or a submodule, returning a tensor) and a
    ``classifier`` submodule: on the user's module itself, or on exactly one of its direct
    submodules (e.g. ``Classifier(MLP(...))``, whose ``backbone`` has both). ``features`` is
    called with the inputs only, also for a ``forward(x, task_labels)``.

    LFL fits domain-incremental streams (e.g. PermutedMNIST): with the classifier frozen from
    the second experience on, outputs of classes that first appear later are never trained.

    Under ``strategy="ddp"`` the old model runs locally on each rank's shard: the term is a
    per-batch loss like the task loss and DDP averages its gradients. The snapshot is the same
    on every rank because DDP keeps the parameters equal.

    Args:
        lambda_e: weight of the feature distance, a non-negative number or one per experience
            (the value at index ``k`` is used while training experience ``k``; index 0 is
            unused). A weight of 0 skips the old model's forward.

    Raises:
        ValueError: for a negative or non-finite ``lambda_e``, an empty list, or a list whose
            length is not the stream's number of experiences.
        TypeError: for a non-numeric ``lambda_e``, or a model without ``features`` or
            ``classifier``, or whose ``features`` does not return a tensor.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule, fit_stream
        >>> from lightning_cl.benchmarks import domain_incremental
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> data = InMemoryDataset(torch.randn(64, 4), torch.arange(64) % 2)
        >>> dm = domain_incremental(data, data, [lambda x: x, lambda x: x.flip(-1)], batch_size=16)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[LFL(lambda_e=0.1)], logger=False,
        ...                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        >>> model = Classifier(MLP(4, 2, hidden_sizes=(8,)))
        >>> result = fit_stream(trainer, ContinualModule(model), dm)
        >>> [p.requires_grad for p in model.backbone.classifier.parameters()]
        [False, False]
    """

    def __init__(self, lambda_e: float | Sequence[float]) -> None:
        self.lambda_e = check_weight(lambda_e, "lambda_e")
        self._experience: int = -1
        self._teacher: nn.Module | None = None
        # old-model weights from load_state_dict, placed into a copy of the model at first use
        # (a callback's state is restored before it can see the model)
        self._pending: dict[str, Tensor] | None = None
        # where `features` and `classifier` live: "" for the user's module, else a child's name
        self._path: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(lambda_e=self.lambda_e)

    # --------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not isinstance(pl_module, ContinualModule):
            return
        _, self._path = _feature_module(pl_module.module)  # fails early, before any training
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, StreamDataModule) and datamodule.current_experience >= 1:
            # a fit resumed mid-experience skips on_experience_start, and the flag is not part
            # of a checkpoint; this runs before the optimizer and the DDP wrap
            _freeze(pl_module.module, self._path)

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        check_length(self.lambda_e, "lambda_e", len(pl_module.datamodule.train_stream))
        _, self._path = _feature_module(pl_module.module)
        self._experience = experience.index
        self._pending = None
        if experience.index == 0:
            self._teacher = None
            return
        _freeze(pl_module.module, self._path)
        self._teacher = snapshot(pl_module.module)

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        if self._experience < 1:
            return {}
        lambda_e = weight_at(self.lambda_e, self._experience)
        if lambda_e == 0.0:
            return {}
        student = step.module.module
        teacher = self._teacher_for(student)
        if self._path is None:
            _, self._path = _feature_module(student)
        path = self._path
        x = step.batch[0]
        new = _features(student, path, x)
        with torch.no_grad():
            old = _features(teacher, path, x)
        if new.shape != old.shape:
            raise ValueError(
                f"LFL: the features of the model and of the old model differ in shape: {tuple(new.shape)} "
                f"vs {tuple(old.shape)}."
            )
        # in float32: under mixed precision the features may be half
        return {"lfl": lambda_e * F.mse_loss(new.float(), old.float())}

    def _teacher_for(self, student: nn.Module) -> nn.Module:
        self._teacher = place_teacher(self._teacher, self._pending, student, "LFL", "old model")
        self._pending = None
        return self._teacher

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"experience": self._experience, **teacher_state(self._teacher, self._pending)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._experience = int(state_dict.get("experience", -1))
        self._teacher, self._pending = None, load_teacher(state_dict)


def _has_parts(module: nn.Module) -> bool:
    return callable(getattr(module, "features", None)) and isinstance(getattr(module, "classifier", None), nn.Module)


def _feature_module(model: nn.Module) -> tuple[nn.Module, str]:
    """The module with ``features`` and ``classifier``: ``model``, or its one direct submodule with both."""
    if _has_parts(model):
        return model, ""
    candidates = [(name, child) for name, child in model.named_children() if _has_parts(child)]
    if len(candidates) == 1:
        name, child = candidates[0]
        return child, name
    missing = [
        attr
        for attr, ok in (
            ("features", callable(getattr(model, "features", None))),
            ("classifier", isinstance(getattr(model, "classifier", None), nn.Module)),
        )
        if not ok
    ]
    found = f" (several submodules have both: {[n for n, _ in candidates]})" if candidates else ""
    raise TypeError(
        f"LFL needs the model's features and its classifier: {type(model).__name__} has no "
        f"{' and no '.join(f'`{a}`' for a in missing)}{found}. Add `features(x)` (a method or submodule "
        "returning the features the classifier reads) and a `classifier` submodule (the last layer, "
        "frozen from the second experience on) to the module, or to exactly one of its direct submodules."
    )


def _features(model: nn.Module, path: str, x: Tensor) -> Tensor:
    owner = model.get_submodule(path) if path else model
    features: Callable[[Tensor], Any] = owner.features  # type: ignore[assignment]
    out = features(x)
    if not isinstance(out, Tensor):
        raise TypeError(f"LFL: {type(owner).__name__}.features(x) must return a tensor, got {type(out).__name__}.")
    return out


def _freeze(model: nn.Module, path: str) -> None:
    owner = model.get_submodule(path) if path else model
    classifier: nn.Module = owner.classifier  # type: ignore[assignment]
    classifier.requires_grad_(False)
