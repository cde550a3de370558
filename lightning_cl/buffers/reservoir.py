"""ReservoirBuffer: a uniform sample of everything the stream has shown so far."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_cl.buffers.base import Buffer, Candidates, FeatureFn


class ReservoirBuffer(Buffer):
    """Reservoir sampling: every sample seen so far is in the buffer with the same probability.

    Vitter, "Random Sampling with a Reservoir", ACM TOMS 1985. Each sample draws a random key
    when it is offered and the buffer keeps the ``memory_size`` largest keys, which is a
    uniform sample of all samples offered, whether they come one batch or one experience at
    a time. The keys are part of the state, so a resumed run keeps exactly the same samples.

    Args:
        memory_size: the most samples kept.
        seed: seed of the keys.

    Example:
        >>> import torch
        >>> from lightning_cl.buffers.base import Candidates
        >>> buffer = ReservoirBuffer(memory_size=3)
        >>> zeros = torch.zeros(10, dtype=torch.long)
        >>> buffer.update(Candidates(zeros, torch.arange(10), zeros, zeros)); len(buffer), buffer.seen
        (3, 10)
    """

    def __init__(self, memory_size: int, seed: int = 0) -> None:
        super().__init__(memory_size, seed)
        self.keys = torch.zeros(0, dtype=torch.float64)
        self.seen = 0

    def update(
        self,
        candidates: Candidates,
        extras: Mapping[str, Tensor] | None = None,
        features: FeatureFn | None = None,
    ) -> None:
        pool, merged = self._pool(candidates, extras)
        new_keys = torch.rand(len(candidates), generator=self._generator(self.seen), dtype=torch.float64)
        keys = torch.cat([self.keys, new_keys])
        keep = torch.topk(keys, min(self.memory_size, len(keys))).indices.sort().values
        self.seen += len(candidates)
        self.keys = keys[keep]
        self._set(pool, merged, keep)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "keys": self.keys.clone(), "seen": self.seen}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.keys = torch.as_tensor(state_dict.get("keys", torch.zeros(len(self))), dtype=torch.float64)
        self.seen = int(state_dict.get("seen", len(self)))
