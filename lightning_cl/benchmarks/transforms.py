"""Batched input transforms (picklable, so loaders with worker processes can use them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Normalize:
    """``(x * scale - mean) / std`` per channel, on a batch ``[B, C, ...]`` of any dtype.

    Args:
        mean: per-channel mean (after scaling).
        std: per-channel standard deviation (after scaling).
        scale: factor applied first (``1/255`` turns uint8 pixels into [0, 1]).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 1.0) -> None:
        if len(mean) != len(std):
            raise ValueError(f"`std`: expected {len(mean)} values (one per mean), got {len(std)}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std`: expected positive values, got {list(std)}.")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.scale = scale

    def __call__(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x.float() * self.scale - self.mean.view(shape)) / self.std.view(shape)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, scale={self.scale})"


class Permute:
    """A fixed permutation of the pixels of a batch ``[B, ...]`` (PermutedMNIST).

    Args:
        permutation: a permutation of ``range(number of pixels)``.
    """

    def __init__(self, permutation: Tensor) -> None:
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"`permutation`: expected a permutation of 0..{len(permutation) - 1}.")
        self.permutation = permutation

    def __call__(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), -1)[:, self.permutation].reshape(x.shape)

    def __repr__(self) -> str:
        return f"Permute(pixels={len(self.permutation)})"
