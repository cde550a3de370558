"""MultiHeadClassifier: one growing linear head per task, chosen by the task label of each sample."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from lightning_cl.core.dynamic import DynamicModule
from lightning_cl.core.experience import Experience
from lightning_cl.models.incremental import GrowingLinear, _check_head_arguments, _check_seed, _derive_seed


def _task_tensor(task_labels: Tensor | int, batch_size: int, device: torch.device) -> Tensor:
    """Task labels as a ``[B]`` long tensor (an int or a 0-dim tensor labels the whole batch)."""
    if isinstance(task_labels, bool) or not isinstance(task_labels, (int, Tensor)):
        raise TypeError(f"`task_labels`: expected a tensor [B] or an int, got {type(task_labels).__name__}.")
    labels = torch.as_tensor(task_labels, device=device)
    if labels.dim() == 0:
        labels = labels.expand(batch_size)
    if labels.dim() != 1 or len(labels) != batch_size:
        raise ValueError(
            f"`task_labels`: expected one task label per sample ({batch_size}), got shape {tuple(labels.shape)}."
        )
    return labels.long()


def _tasks_present(labels: Tensor, known: list[int], owner: str, part: str = "head") -> list[int]:
    present = labels.unique().tolist()
    unknown = [t for t in present if t not in known]
    if unknown:
        raise ValueError(
            f"`task_labels`: {owner} has no {part} for task {unknown[0]}; known tasks: {sorted(known)}. "
            f"A {part} is created by `adaptation` when an experience of that task starts (ContinualModule "
            "does it in trainer.fit), or by `eval_adaptation` for a test experience."
        )
    return present


def _load_current_task(current_task: Tensor, state_dict: dict[str, Any], prefix: str) -> bool:
    """Set the buffer ``current_task`` from ``state_dict`` before the load (freezing follows it); ``True`` if set."""
    current = state_dict.get(prefix + "current_task")
    if isinstance(current, Tensor) and current.numel() == 1:
        current_task.fill_(int(current))
        return True
    return False


def _route(
    labels: Tensor, present: list[int], task_output: Callable[[int, Tensor | None], Tensor], mask_value: float
) -> Tensor:
    """Assemble per-task outputs into ``[B, widest]``, padding narrower heads with ``mask_value``.

    ``task_output(t, rows)`` returns the logits of task ``t`` for the samples ``rows`` (``None``: all).
    """
    if len(present) == 1:  # the usual case (one task per experience): no gather, no scatter
        return task_output(present[0], None)
    pieces = []
    for t in present:
        rows = (labels == t).nonzero().squeeze(1)
        pieces.append((rows, task_output(t, rows)))
    width = max(out.shape[1] for _, out in pieces)
    result = pieces[0][1].new_full((len(labels), width), mask_value)
    for rows, out in pieces:
        result[rows, : out.shape[1]] = out
    return result


class MultiHeadClassifier(DynamicModule):
    """One growing linear head per task, chosen per sample by its task label.

    For task-incremental streams. At the start of an experience (:meth:`adaptation`, called by
    :class:`~lightning_cl.ContinualModule` before ``configure_optimizers`` and the DDP wrap) the
    head of the experience's ``task_label`` is created if needed and grown to the experience's
    classes, as in :class:`~lightning_cl.models.incremental.IncrementalClassifier` (old rows kept,
    new rows from a generator seeded by ``(seed, task, size)``); each head masks its own units
    never trained. Heads are stored in ``heads``, an ``nn.ModuleDict`` keyed by ``str(task)``.

    **Freezing.** At every experience start the heads of all tasks other than the current one are
    frozen (``requires_grad=False``) and the current one is unfrozen: DDP registers only trainable
    parameters when it wraps the model, so multi-process training needs no
    ``find_unused_parameters``. A frozen head still passes gradients to the features below it, so
    replayed samples of old tasks train the shared trunk, but not their (fixed) head. The current
    task is kept in the buffer ``current_task``, so a checkpoint restores the freezing too.

    ``forward(x, task_labels)`` routes each sample to its task's head; a batch may mix tasks (each
    present task's head runs on its rows), and the output is padded to the widest head with
    ``mask_value``. Loading a ``state_dict`` creates (and grows) the heads it holds that are missing.

    For the stream evaluation, :meth:`eval_adaptation` creates the head of a test experience's
    task not trained yet (frozen, every unit masked), so the whole test stream can be evaluated.

    Args:
        in_features: size of an input (the features of the backbone).
        initial_out_features: number of outputs of a new head (grown to its task's classes).
        masking: replace the logits of units never trained by ``mask_value``.
        mask_value: the logit of a masked unit, and of the padding of narrower heads.
        seed: seed of the heads and rows created by adaptation.

    Raises:
        ValueError: if ``in_features`` or ``initial_out_features`` is not a positive integer;
            in ``forward``, for a task label with no head.
        TypeError: if ``masking`` is not a bool, ``mask_value`` not a number or ``seed`` not an int.

    Example:
        >>> import torch
        >>> from lightning_cl import Experience
        >>> data = torch.utils.data.TensorDataset(torch.zeros(1, 4))  # adaptation reads the classes and task label
        >>> heads = MultiHeadClassifier(in_features=4)
        >>> heads.adaptation(Experience(0, data, classes_in_this_experience=(0, 1), task_label=0))
        >>> heads.adaptation(Experience(1, data, classes_in_this_experience=(0, 1, 2), task_label=1))
        >>> sorted(heads.heads), heads.heads["0"].classifier.weight.requires_grad
        (['0', '1'], False)
        >>> out = heads(torch.zeros(3, 4), torch.tensor([0, 1, 0]))
        >>> out.shape, out[0, 2].item()
        (torch.Size([3, 3]), -1000.0)
    """

    current_task: Tensor

    def __init__(
        self,
        in_features: int,
        initial_out_features: int = 2,
        masking: bool = True,
        mask_value: float = -1000.0,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_head_arguments(in_features, initial_out_features, masking, mask_value)
        _check_seed(seed)
        self.in_features = in_features
        self.initial_out_features = initial_out_features
        self.masking = masking
        self.mask_value = float(mask_value)
        self.seed = seed
        self.heads = nn.ModuleDict()
        # a buffer, so that it follows the module's device and is restored from checkpoints
        self.register_buffer("current_task", torch.tensor(-1, dtype=torch.long))

    @property
    def tasks(self) -> list[int]:
        """The task labels that have a head, in creation order."""
        return [int(k) for k in self.heads]

    def _head(self, task: int, out_features: int, exact: bool = False) -> GrowingLinear:
        """The head of ``task``, created (with at least ``initial_out_features`` outputs unless
        ``exact``) or grown to ``out_features`` outputs."""
        key = str(task)
        if key not in self.heads:
            reference = next(iter(self.heads.values()), None)
            dtype = reference.classifier.weight.dtype if isinstance(reference, GrowingLinear) else None
            head_seed = _derive_seed(self.seed, task)
            self.heads[key] = GrowingLinear(
                self.in_features,
                out_features if exact else max(self.initial_out_features, out_features),
                self.masking,
                self.mask_value,
                seed=head_seed,
                init_seed=_derive_seed(head_seed, -1),
                device=self.current_task.device,
                dtype=dtype,
            )
        head = cast(GrowingLinear, self.heads[key])
        head.grow(out_features)
        return head

    def _freeze_other_tasks(self) -> None:
        current = str(int(self.current_task))
        for key, head in self.heads.items():
            head.requires_grad_(key == current)

    def adaptation(self, experience: Experience) -> None:
        """Create or grow the head of the experience's task, mark its classes trained, freeze the others."""
        classes = experience.classes_in_this_experience
        self._head(experience.task_label, max(classes) + 1).activate(classes)
        self.current_task.fill_(experience.task_label)
        self._freeze_other_tasks()

    def eval_adaptation(self, experience: Experience) -> None:
        """Create or grow the head of a test experience's task (frozen; its untrained classes stay masked)."""
        self._head(experience.task_label, max(experience.classes_in_this_experience) + 1)
        self._freeze_other_tasks()

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """Logits ``[B, C]`` of each sample's task head, ``C`` the widest head among the tasks present."""
        labels = _task_tensor(task_labels, len(x), x.device)
        present = _tasks_present(labels, self.tasks, type(self).__name__)
        return _route(
            labels, present, lambda t, rows: self.heads[str(t)](x if rows is None else x[rows]), self.mask_value
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # heads trained after this model was built: create them (each head grows itself on load)
        head_prefix, suffix = prefix + "heads.", ".classifier.weight"
        for key, value in state_dict.items():
            if key.startswith(head_prefix) and key.endswith(suffix) and isinstance(value, Tensor):
                task = key[len(head_prefix) : -len(suffix)]
                if task.lstrip("-").isdigit() and task not in self.heads:
                    self._head(int(task), value.shape[0], exact=True)
        if _load_current_task(self.current_task, state_dict, prefix):
            self._freeze_other_tasks()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, initial_out_features={self.initial_out_features}, "
            f"masking={self.masking}, mask_value={self.mask_value}"
        )


class MultiHeadNet(nn.Module):
    """Any backbone's features, then one head per task (a :class:`MultiHeadClassifier`).

    For task-incremental streams with a convolutional trunk, e.g. GEM's multi-head reduced
    ResNet-18 (``MultiHeadNet(SlimResNet18(10), in_features=160)``). The features are
    ``backbone.features(x)`` when the backbone has ``features`` (the reference backbones and
    :class:`~lightning_cl.models.MLP` do), else ``backbone(x)``; the backbone's own classifier is
    then unused.

    Args:
        backbone: the shared trunk.
        in_features: size of the backbone's features.
        initial_out_features: outputs of a new head before it grows to its task's classes.

    Example:
        >>> import torch
        >>> from lightning_cl import Experience
        >>> net = MultiHeadNet(torch.nn.Flatten(), in_features=4)
        >>> net.heads.adaptation(Experience(0, torch.utils.data.TensorDataset(torch.zeros(1)), (0, 1), task_label=0))
        >>> net(torch.zeros(3, 2, 2), torch.tensor([0, 0, 0])).shape
        torch.Size([3, 2])
    """

    def __init__(self, backbone: nn.Module, in_features: int, initial_out_features: int = 2) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone`: expected a torch.nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone
        self.heads = MultiHeadClassifier(in_features, initial_out_features=initial_out_features)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        features = getattr(self.backbone, "features", None)
        h = features(x) if callable(features) else self.backbone(x)
        return self.heads(h.flatten(1), task_labels)
