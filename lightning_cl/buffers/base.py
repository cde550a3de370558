"""The buffer contract: slots that point into the stream, never copies of its samples."""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl.benchmarks._common import take
from lightning_cl.core.data import ConcatDataset, StackedBatch, _mix_seed, collate, targets_of
from lightning_cl.core.experience import Experience, Stream

FeatureFn = Callable[["Candidates"], Tensor]
"""Features ``[N, D]`` of candidate samples (computed by the CL method with its model)."""


def _long(values: Any) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long).reshape(-1)


@dataclass
class Candidates:
    """Samples of the stream offered to a buffer: where they are and what they are.

    Attributes:
        experience: index of the train experience of each sample.
        position: its position in that experience's dataset.
        targets: its class id.
        task_labels: its task label.
    """

    experience: Tensor
    position: Tensor
    targets: Tensor
    task_labels: Tensor

    @classmethod
    def of_experience(cls, experience: Experience, positions: Tensor | None = None) -> Candidates:
        """The samples of ``experience`` at ``positions`` (all of them by default)."""
        targets = targets_of(experience.dataset)
        index = torch.arange(len(targets)) if positions is None else _long(positions)
        n = len(index)
        return cls(
            torch.full((n,), experience.index, dtype=torch.long),
            index,
            targets[index],
            torch.full((n,), experience.task_label, dtype=torch.long),
        )

    def __len__(self) -> int:
        return len(self.position)

    def select(self, index: Tensor) -> Candidates:
        """The candidates at ``index``."""
        return Candidates(self.experience[index], self.position[index], self.targets[index], self.task_labels[index])

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        """The candidates of ``parts``, one after the other."""
        return Candidates(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("experience", "position", "targets", "task_labels")


def _check_memory_size(memory_size: Any) -> int:
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"`memory_size`: expected a positive integer, got {memory_size!r}.")
    return memory_size


def read_samples(stream: Stream, samples: Candidates) -> tuple[Dataset, Tensor]:
    """``samples`` read from ``stream``, grouped by experience: ``(dataset, order)``, where item
    ``k`` of ``dataset`` is sample ``order[k]`` of ``samples``."""
    parts, order = [], []
    for e in torch.unique(samples.experience).tolist():
        rows = (samples.experience == e).nonzero().squeeze(1)
        experience = stream[e]
        parts.append(take(experience.dataset, samples.position[rows], experience.task_label))
        order.append(rows)
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), torch.cat(order)


class Buffer(ABC):
    """A bounded memory of stream samples, held as ``(experience, position)`` slots.

    A slot points into ``train_stream[experience].dataset``; :meth:`dataset` reads the samples
    from there when they are needed (with the experience's transforms, augmentation included).
    A method may attach per-slot tensors (``extras``, e.g. DER's logits); they follow their slot
    through every eviction. All state is tensors, so a checkpoint loads with ``weights_only=True``.

    Subclasses decide what to keep in :meth:`update` (by calling :meth:`_set`).

    Args:
        memory_size: the most slots the buffer ever holds.
        seed: seed of the buffer's own generator (the same on every rank, so every rank keeps
            the same samples).
    """

    def __init__(self, memory_size: int, seed: int = 0) -> None:
        self.memory_size = _check_memory_size(memory_size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed`: expected an integer, got {type(seed).__name__} {seed!r}.")
        self.seed = seed
        self.slots = Candidates(*(torch.zeros(0, dtype=torch.long) for _ in _FIELDS))
        self.extras: dict[str, Tensor] = {}
        self.updates = 0  # number of update calls: part of every generator's seed
        self._cache: tuple[int, int, bool, Dataset] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    @abstractmethod
    def update(
        self,
        candidates: Candidates,
        extras: Mapping[str, Tensor] | None = None,
        features: FeatureFn | None = None,
    ) -> None:
        """Offer ``candidates`` (with their per-sample ``extras``); keep what the policy keeps."""

    # ------------------------------------------------------------------------------ helpers
    def _generator(self, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(_mix_seed(self.seed, self.updates, *keys))

    def _pool(
        self, candidates: Candidates, extras: Mapping[str, Tensor] | None
    ) -> tuple[Candidates, dict[str, Tensor]]:
        """Current slots followed by the candidates, with their extras aligned."""
        extras = dict(extras or {})
        if len(self) and set(extras) != set(self.extras):
            raise ValueError(
                f"{type(self).__name__}.update: expected extras {sorted(self.extras)} like the samples already "
                f"stored, got {sorted(extras)}."
            )
        for key, value in extras.items():
            if len(value) != len(candidates):
                raise ValueError(
                    f"{type(self).__name__}.update: extras[{key!r}] has {len(value)} rows for {len(candidates)} "
                    "candidates."
                )
        pool = Candidates.cat([self.slots, candidates])
        merged = {
            k: torch.cat([self.extras[k].to(v.device, v.dtype), v.detach()]) if len(self) else v.detach().clone()
            for k, v in extras.items()
        }
        return pool, {k: v.cpu() for k, v in merged.items()}

    def _set(self, pool: Candidates, extras: Mapping[str, Tensor], keep: Tensor) -> None:
        keep = _long(keep)
        if len(keep) > self.memory_size:
            raise RuntimeError(f"{type(self).__name__}: kept {len(keep)} samples, over memory_size={self.memory_size}.")
        self.slots = pool.select(keep)
        self.extras = {k: v[keep] for k, v in extras.items()}
        self.updates += 1
        self._cache = None

    # ------------------------------------------------------------------------------ reading
    def dataset(self, stream: Stream, with_slots: bool = False) -> Dataset:
        """The buffered samples, read from ``stream`` (the train stream the slots point into).

        With ``with_slots``, each sample ends with its slot number (index into ``slots`` and
        ``extras``), so a method can look up what it stored for it.

        Raises:
            ValueError: if the buffer is empty.
        """
        if not len(self):
            raise ValueError(f"{type(self).__name__}: the buffer is empty; nothing to read.")
        key = (id(stream), self.updates, with_slots)
        if self._cache is not None and self._cache[:3] == key:
            return self._cache[3]
        data, order = read_samples(stream, self.slots)
        if with_slots:
            data = _WithSlots(data, order)
        self._cache = (*key, data)
        return data

    def live_dataset(self, stream: Stream, with_slots: bool = False) -> Dataset:
        """A view of ``memory_size`` items that reads the buffer as it is when a batch is fetched.

        For methods whose buffer changes during an experience (updated at every
        mini-experience of an online stream): item ``i`` is buffered sample
        ``i * len(buffer) // memory_size``, so a uniform draw over the view is a near-uniform
        draw over the buffer, and an empty buffer gives empty batches. Loader workers hold a
        copy made when the epoch starts: use ``num_workers=0`` to see updates within an epoch.
        ``with_slots`` appends each sample's slot number, as in :meth:`dataset`.
        """
        return _LiveView(self, stream, with_slots)

    def fingerprint(self) -> int:
        """A checksum of the slots (equal buffers have equal fingerprints, e.g. across ranks)."""
        data = torch.stack([self.slots.experience, self.slots.position]).numpy().tobytes()
        return zlib.crc32(data)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            **{f: getattr(self.slots, f).clone() for f in _FIELDS},
            "extras": {k: v.clone() for k, v in self.extras.items()},
            "updates": self.updates,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        empty = torch.zeros(0, dtype=torch.long)
        self.slots = Candidates(*(_long(state_dict.get(f, empty)) for f in _FIELDS))
        self.extras = {k: torch.as_tensor(v) for k, v in state_dict.get("extras", {}).items()}
        self.updates = int(state_dict.get("updates", 0))
        self._cache = None
        if len(self) > self.memory_size:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved buffer holds {len(self)} samples, more than "
                f"memory_size={self.memory_size}."
            )


class _WithSlots(Dataset):
    """A buffer's samples, each followed by its slot number."""

    def __init__(self, data: Dataset, slots: Tensor) -> None:
        self.data = data
        self.slots = slots

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.data[i], self.slots[i])

    def __getitems__(self, indices: list[int]) -> StackedBatch:
        getitems = getattr(self.data, "__getitems__", None)
        batch = collate(getitems(indices)) if getitems else collate([self.data[i] for i in indices])
        return StackedBatch([*batch, self.slots[torch.as_tensor(indices, dtype=torch.long)]])


class _LiveView(Dataset):
    """The buffer as it is when each batch is read (see :meth:`Buffer.live_dataset`)."""

    def __init__(self, buffer: Buffer, stream: Stream, with_slots: bool) -> None:
        self.buffer = buffer
        self.stream = stream
        self.with_slots = with_slots

    def __len__(self) -> int:
        return self.buffer.memory_size

    def _fetch(self, indices: list[int]) -> list[Tensor]:
        n = len(self.buffer)
        if n == 0:
            # an empty batch of the stream's shapes: the method sees "no memory yet"
            first = self.stream[0]
            sample = collate([take(first.dataset, torch.tensor([0]), first.task_label)[0]])
            empty = [t[:0] for t in sample]
            return [*empty, torch.zeros(0, dtype=torch.long)] if self.with_slots else empty
        data = self.buffer.dataset(self.stream, self.with_slots)
        picked = (torch.as_tensor(indices, dtype=torch.long) * n // self.buffer.memory_size).tolist()
        getitems = getattr(data, "__getitems__", None)
        return collate(getitems(picked)) if getitems else collate([data[i] for i in picked])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return tuple(t[0] for t in self._fetch([i]))

    def __getitems__(self, indices: list[int]) -> StackedBatch:
        return StackedBatch(self._fetch(indices))
