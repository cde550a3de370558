"""Helpers shared by the CL methods: per-experience weights and frozen model snapshots."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any

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
