"""Helpers shared by the CL methods: per-experience weights and frozen model snapshots (teachers)."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Weight = float | tuple[float, ...]


def check_weight(value: Any, name: str) -> Weight:
    """A non-negative weight, or a non-empty sequence of them (one per experience)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) == 0:
            raise ValueError(f"`{name}`: expected a non-negative number or one per experience, got an empty list.")
        return tuple(check_number(v, f"{name}[{i}]") for i, v in enumerate(value))
    return check_number(value, name)


def check_number(value: Any, name: str) -> float:
    """A non-negative finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}`: expected a non-negative number or a list of them, got {type(value).__name__} {value!r}."
        )
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"`{name}`: expected a non-negative finite number, got {value!r}.")
    return number


def check_length(weight: Weight, name: str, num_experiences: int) -> None:
    """A per-experience weight list must have one value per experience of the stream."""
    if isinstance(weight, tuple) and len(weight) != num_experiences:
        raise ValueError(
            f"`{name}`: expected one value per experience ({num_experiences} for this stream), "
            f"got {len(weight)} values {list(weight)}."
        )


def weight_at(weight: Weight, index: int) -> float:
    """The weight of experience ``index``."""
    return weight[index] if isinstance(weight, tuple) else weight


def cpu_copy(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies of the tensors: what a ``state_dict`` holds."""
    return {name: t.detach().cpu().clone() for name, t in tensors.items()}


def snapshot(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module``: eval mode, no gradients (LightningModule drops its trainer)."""
    frozen = copy.deepcopy(module)
    frozen.eval()
    frozen.requires_grad_(False)
    return frozen


def restore_snapshot(student: nn.Module, weights: dict[str, Tensor], owner: str) -> nn.Module:
    """A frozen copy of ``student`` holding ``weights`` (an old model saved in a checkpoint by ``owner``)."""
    frozen = snapshot(student)
    try:
        frozen.load_state_dict(weights)
    except RuntimeError as error:
        raise RuntimeError(
            f"{owner}: the old model saved in the checkpoint does not fit {type(student).__name__} as it is now "
            f"(was the model changed since?): {error}"
        ) from error
    return frozen


def place_teacher(
    teacher: nn.Module | None, pending: dict[str, Tensor] | None, student: nn.Module, owner: str, what: str
) -> nn.Module:
    """The frozen old model of a distillation method, on the student's device and dtype.

    ``teacher`` is the snapshot taken when the experience started, or ``None`` after
    ``load_state_dict``: its ``pending`` weights are then placed into a copy of ``student`` (a
    callback's state is restored before it can see the model). ``owner`` (the method) and
    ``what`` (its name for the old model) make the error message.
    """
    if teacher is None:
        if pending is None:
            raise RuntimeError(f"{owner}: no {what} for this experience (on_experience_start was not called).")
        teacher = restore_snapshot(student, pending, owner)
    reference = next(student.parameters(), None)
    current = next(teacher.parameters(), None)
    if (
        reference is not None
        and current is not None
        and (current.device != reference.device or current.dtype != reference.dtype)
    ):
        dtype = reference.dtype if reference.is_floating_point() else None
        teacher.to(device=reference.device, dtype=dtype)
    return teacher


def teacher_state(teacher: nn.Module | None, pending: dict[str, Tensor] | None) -> dict[str, Any]:
    """``{"teacher": weights on the CPU}`` for a ``state_dict`` (``{}`` when there is no old model)."""
    if teacher is not None:
        return {"teacher": cpu_copy(teacher.state_dict())}
    if pending is not None:
        return {"teacher": dict(pending)}
    return {}


def load_teacher(state_dict: dict[str, Any]) -> dict[str, Tensor] | None:
    """The old model's weights saved by :func:`teacher_state` (``None`` if absent), to place at first use."""
    teacher = state_dict.get("teacher")
    return None if teacher is None else {k: torch.as_tensor(v) for k, v in teacher.items()}
