"""LwF: Learning without Forgetting (Li & Hoiem)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

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
from lightning_cl.core.data import collate
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import forward_logits, forward_takes_task_labels, probing
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


class LwF(ContinualCallback):
    """Learning without Forgetting: distil the previous model's outputs into the current one.

    Li & Hoiem, "Learning without Forgetting", ECCV 2016 / IEEE TPAMI 2017.

    When experience ``k >= 1`` starts, LwF takes a frozen copy of the user's module (the
    *teacher*: ``copy.deepcopy``, eval mode, ``requires_grad=False``). Every training step then
    adds the loss term ``"lwf"`` (logged as ``train/lwf_loss``)::

        alpha_k * sum over earlier tasks tau of
            KL(softmax(teacher(x, tau)[:, C_tau] / T) || softmax(student(x, tau)[:, C_tau] / T))

    with ``reduction="batchmean"`` (``F.kl_div``, as in Avalanche), where ``C_tau`` are the
    outputs that were active for earlier experiences: the classes of the experiences ``< k``
    with task label ``tau``. So the new classes' outputs are not distilled: in a
    class-incremental stream the term covers exactly ``train_stream.previous_classes(k)``.

    * A model whose ``forward`` takes no task labels has one output space: the term is one KL
      over the classes of all earlier experiences, on the step's logits (``step.logits``: the
      ``"logits"`` of the user's ``training_step`` output, or one more forward).
    * A model with ``forward(x, task_labels)`` (one head per task, task-incremental streams)
      gets one KL per earlier task label ``tau``, summed: the student and the teacher are both
      called with ``x`` and the task labels set to ``tau``, so every earlier head is distilled on
      the current inputs. The current task's head is only distilled if earlier experiences had
      the same task label (then the step's logits are used when the whole batch has it).

    The teacher is called exactly as the student (through
    :func:`~lightning_cl.core.dynamic.forward_logits`), without gradients, and is moved lazily
    to the student's device and dtype at its first use. The term is NOT multiplied by ``T**2``:
    Li & Hoiem's loss and Avalanche's ``LwF`` do not scale it, so the ``alpha`` values of the
    paper and of Avalanche carry over. Multiply ``alpha`` by ``T**2`` for Hinton et al.'s
    gradient scaling.

    ``task_loss_weight`` scales the task loss (the user's, e.g. cross-entropy on the current
    classes) during experience ``k``, as van de Ven et al. ("Three scenarios for continual
    learning", 2019) weight it ``1 / (k + 1)`` against the distillation term: with
    ``task_loss_weight=[1, 1/2, 1/3, 1/4, 1/5]`` and ``alpha=[0, 0.5, 1.33, 2.25, 3.2]`` this is
    continual-learning-baselines' LwF on class-incremental SplitMNIST (its ``LwFCEPenalty``). A weight
    other than 1 makes LwF replace the task loss (``task_loss``), so it cannot be combined with
    another method that replaces it (e.g. ER-ACE); the default 1 leaves it alone.

    Cost: one more copy of the model on the device, one teacher forward per step (plus one
    student forward when ``training_step`` returns no ``"logits"``); with task labels, a student
    and a teacher forward per earlier task.

    A model whose ``forward`` returns no logits ``[B, C]`` is refused when training starts, with
    LwF named (an initial stream evaluation, e.g. ``fit_stream(..., evaluate_initial=True)``,
    refuses it even earlier, as ContinualModule needs logits to evaluate).

    Under ``strategy="ddp"`` the teacher runs locally on each rank's shard: the term is a
    per-batch loss like the task loss and DDP averages its gradients, so nothing is reduced by
    hand. The snapshot is the same on every rank because DDP keeps the parameters equal.

    Args:
        alpha: weight of the distillation term, a non-negative number or one per experience
            (the value at index ``k`` is used while training experience ``k``; index 0 is unused,
            there is no teacher then). A weight of 0 skips the teacher forward.
        temperature: softmax temperature ``T > 0`` of both distributions.
        task_loss_weight: weight of the task loss, a non-negative number or one per experience
            (default 1: the task loss as it is).

    Raises:
        ValueError: for a negative or non-finite ``alpha`` or ``task_loss_weight``, an empty list, a
            list whose length is not the stream's number of experiences, or a non-positive
            ``temperature``.
        TypeError: for a non-numeric ``alpha``/``temperature``, or a model whose ``forward`` does
            not return logits ``[B, C]``.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import from_tensors
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(80, 4), torch.arange(80) % 4
        >>> dm = from_tensors(x, y, x, y, num_experiences=2, class_order=range(4), batch_size=16)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[LwF(alpha=1.0, temperature=2.0)], logger=False,
        ...                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(4, 4, hidden_sizes=(8,))))
        >>> for _ in range(dm.num_experiences):
        ...     trainer.fit(model, datamodule=dm)  # the second fit distils classes 0 and 1
        >>> float(trainer.callback_metrics["train/lwf_loss"]) > 0
        True
    """

    def __init__(
        self,
        alpha: float | Sequence[float] = 1.0,
        temperature: float = 2.0,
        task_loss_weight: float | Sequence[float] = 1.0,
    ) -> None:
        self.alpha = check_weight(alpha, "alpha")
        self.task_loss_weight = check_weight(task_loss_weight, "task_loss_weight")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"`temperature`: expected a positive number, got {type(temperature).__name__}.")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"`temperature`: expected a positive finite number, got {temperature!r}.")
        self.temperature: float = float(temperature)
        self._experience: int = -1
        self._task_label: int = 0
        # task label -> the outputs active for the experiences before the current one
        self._active: dict[int, tuple[int, ...]] = {}
        self._teacher: nn.Module | None = None
        # teacher weights from load_state_dict, placed into a copy of the model at first use
        # (a callback's state is restored before it can see the model)
        self._pending: dict[str, Tensor] | None = None
        self._takes_task_labels: bool | None = None
        self._checked: bool = False

    @property
    def state_key(self) -> str:
        # task_loss_weight only when set: checkpoints of LwF without it keep their key
        extra = {} if self.task_loss_weight == 1.0 else {"task_loss_weight": self.task_loss_weight}
        return self._generate_state_key(alpha=self.alpha, temperature=self.temperature, **extra)

    # --------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before ContinualModule's own check of the outputs (callbacks' hooks run first), after
        # the model's adaptation (a multi-head model has its heads by now): a model LwF cannot
        # read fails here, with LwF named, rather than deep inside a training step
        if self._checked or not isinstance(pl_module, ContinualModule):
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, StreamDataModule):
            return
        index = min(datamodule.current_experience, datamodule.num_experiences - 1)
        _check_logits(pl_module.module, datamodule.train_stream[index].dataset)
        self._checked = True

    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        stream = pl_module.datamodule.train_stream
        check_length(self.alpha, "alpha", len(stream))
        check_length(self.task_loss_weight, "task_loss_weight", len(stream))
        self._experience = experience.index
        self._task_label = experience.task_label
        self._takes_task_labels = forward_takes_task_labels(pl_module.module)
        self._pending = None
        if experience.index == 0:
            self._teacher, self._active = None, {}
            return
        active: dict[int, set[int]] = {}
        for earlier in stream[: experience.index]:
            active.setdefault(earlier.task_label, set()).update(earlier.classes_in_this_experience)
        self._active = {task: tuple(sorted(classes)) for task, classes in sorted(active.items())}
        # taken after the model's adaptation to this experience: same shapes as the student
        self._teacher = snapshot(pl_module.module)

    def task_loss(self, step: TrainingStep) -> Tensor | None:
        if self._experience < 0:
            return None
        weight = weight_at(self.task_loss_weight, self._experience)
        return None if weight == 1.0 else weight * step.loss

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        if self._experience < 1 or not self._active:
            return {}
        alpha = weight_at(self.alpha, self._experience)
        if alpha == 0.0:
            return {}
        student = step.module.module
        teacher = self._teacher_for(student)
        if self._takes_task_labels is None:
            self._takes_task_labels = forward_takes_task_labels(student)
        batch = step.batch
        T = self.temperature
        if not self._takes_task_labels:
            # one output space: every class of an earlier experience, whatever its task label
            columns = tuple(sorted({c for classes in self._active.values() for c in classes}))
            with torch.no_grad():
                old = _logits(teacher, batch, False)
            return {"lwf": alpha * _distill(_step_logits(step), old, columns, T)}
        x = batch[0]
        total: Tensor | None = None
        for task, columns in self._active.items():
            if task == self._task_label and _all_of_task(batch, task):
                new = _step_logits(step)
                with torch.no_grad():
                    old = _logits(teacher, batch, True)
            else:
                # another task's head: both models see the current inputs with that task's label
                routed = (x, batch[1], torch.full((len(x),), task, dtype=torch.long, device=x.device))
                new = _logits(student, routed, True)
                with torch.no_grad():
                    old = _logits(teacher, routed, True)
            term = _distill(new, old, columns, T)
            total = term if total is None else total + term
        assert total is not None  # for mypy: self._active is not empty
        return {"lwf": alpha * total}

    def _teacher_for(self, student: nn.Module) -> nn.Module:
        self._teacher = place_teacher(self._teacher, self._pending, student, "LwF", "teacher")
        self._pending = None
        return self._teacher

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "experience": self._experience,
            "task_label": self._task_label,
            "active": {task: list(classes) for task, classes in self._active.items()},
            **teacher_state(self._teacher, self._pending),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._experience = int(state_dict.get("experience", -1))
        self._task_label = int(state_dict.get("task_label", 0))
        active = state_dict.get("active", {})
        self._active = {int(task): tuple(int(c) for c in classes) for task, classes in active.items()}
        self._teacher, self._pending = None, load_teacher(state_dict)
        self._takes_task_labels = None


def _logits(model: nn.Module, batch: Any, takes_task_labels: bool) -> Tensor:
    try:
        return forward_logits(model, batch, takes_task_labels)
    except TypeError as error:
        raise TypeError(f"LwF distils the logits of the model's forward, and could not read them: {error}") from error


def _step_logits(step: TrainingStep) -> Tensor:
    logits = step.logits
    if logits.dim() != 2:
        raise TypeError(
            f"LwF distils logits [B, C]; the step's logits have shape {tuple(logits.shape)} (the 'logits' "
            "returned by training_step, or the output of forward)."
        )
    return logits


def _all_of_task(batch: Any, task: int) -> bool:
    if len(batch) <= 2:  # forward_logits passes task label 0 to a batch without task labels
        return task == 0
    return bool((batch[2] == task).all())


def _select(logits: Tensor, columns: tuple[int, ...]) -> Tensor:
    if columns[-1] >= logits.shape[1]:
        raise ValueError(
            f"LwF: earlier experiences used the outputs {list(columns)}, but the model returns only "
            f"{logits.shape[1]} logits."
        )
    if columns == tuple(range(columns[0], columns[-1] + 1)):
        return logits[:, columns[0] : columns[-1] + 1]  # a view, no gather
    return logits[:, torch.tensor(columns, device=logits.device)]


def _distill(new: Tensor, old: Tensor, columns: tuple[int, ...], temperature: float) -> Tensor:
    # in float32: under mixed precision the logits may be half
    log_p = F.log_softmax(_select(new, columns).float() / temperature, dim=1)
    q = F.softmax(_select(old, columns).float() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def _check_logits(model: nn.Module, dataset: Dataset) -> None:
    """One sample of ``dataset`` through ``model``'s forward, in eval mode: LwF needs logits ``[B, C]``."""
    batch = collate([dataset[0]])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = [v.to(device) if isinstance(v, Tensor) else v for v in batch]
    with probing(model):  # one sample: keep BatchNorm statistics untouched
        _logits(model, batch, forward_takes_task_labels(model))
