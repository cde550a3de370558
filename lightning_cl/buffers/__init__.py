"""Replay memories: storage policies (what to keep per group) and selection strategies (which ones).

Buffers hold ``(experience, position)`` slots into the stream's train datasets, plus per-slot
tensors a method needs (e.g. DER's logits), never copies of the samples.
"""

from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.buffers.parametric import ClassBalancedBuffer, ExperienceBalancedBuffer, ParametricBuffer
from lightning_cl.buffers.reservoir import ReservoirBuffer
from lightning_cl.buffers.selection import (
    ClosestToCenterSelection,
    HerdingSelection,
    RandomSelection,
    SelectionStrategy,
)

__all__ = [
    "Buffer",
    "Candidates",
    "ClassBalancedBuffer",
    "ClosestToCenterSelection",
    "ExperienceBalancedBuffer",
    "HerdingSelection",
    "ParametricBuffer",
    "RandomSelection",
    "ReservoirBuffer",
    "SelectionStrategy",
]
