"""Experiences and streams: the vocabulary of continual learning."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Experience:
    """One step of a stream: a dataset and what is known about it.

    Args:
        index: position of the experience in its stream, from 0.
        dataset: the samples, as the model sees them (transforms applied).
        classes_in_this_experience: the class ids (as seen by the model) present in ``dataset``.
        task_label: the task label of every sample of this experience.
    """

    index: int
    dataset: Dataset = field(repr=False)
    classes_in_this_experience: tuple[int, ...]
    task_label: int = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class Stream(Sequence[Experience]):
    """An ordered, immutable sequence of experiences (``len(s)``, ``s[i]``, ``for e in s``).

    Args:
        experiences: the experiences, whose ``index`` must equal their position.
        name: a short name used in messages (``"train"``, ``"test"``).

    Raises:
        ValueError: if an experience's index does not match its position or one is empty.

    Example:
        >>> import torch
        >>> from lightning_cl.core.data import InMemoryDataset
        >>> ds = InMemoryDataset(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]))
        >>> s = Stream([Experience(0, ds.subset([0, 1]), (0, 1)), Experience(1, ds.subset([2, 3]), (2, 3))])
        >>> s.previous_classes(1), s.classes_seen_so_far(1), s.future_classes(0)
        ((0, 1), (0, 1, 2, 3), (2, 3))
    """

    def __init__(self, experiences: Sequence[Experience], name: str = "stream") -> None:
        self.name = name
        self._experiences = tuple(experiences)
        for position, exp in enumerate(self._experiences):
            if exp.index != position:
                raise ValueError(
                    f"`experiences` of the {name} stream: expected experience {position} to have "
                    f"index {position}, got index {exp.index}."
                )
            if len(exp) == 0:
                raise ValueError(
                    f"`experiences` of the {name} stream: experience {position} "
                    f"(classes {list(exp.classes_in_this_experience)}) is empty; every experience "
                    "needs at least one sample."
                )

    def __len__(self) -> int:
        return len(self._experiences)

    @overload
    def __getitem__(self, index: int) -> Experience: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Experience]: ...

    def __getitem__(self, index: int | slice) -> Experience | Sequence[Experience]:
        return self._experiences[index]

    def __iter__(self) -> Iterator[Experience]:
        return iter(self._experiences)

    def __repr__(self) -> str:
        return f"Stream(name={self.name!r}, num_experiences={len(self)})"

    def _classes(self, experiences: Sequence[Experience]) -> tuple[int, ...]:
        return tuple(sorted({c for e in experiences for c in e.classes_in_this_experience}))

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"`index`: expected 0 <= index < {len(self)} in the {self.name} stream, got {index}.")

    def previous_classes(self, index: int) -> tuple[int, ...]:
        """Classes of the experiences before ``index``."""
        self._check_index(index)
        return self._classes(self._experiences[:index])

    def classes_seen_so_far(self, index: int) -> tuple[int, ...]:
        """Classes of the experiences up to and including ``index``."""
        self._check_index(index)
        return self._classes(self._experiences[: index + 1])

    def future_classes(self, index: int) -> tuple[int, ...]:
        """Classes of the experiences after ``index`` that were not seen up to ``index``."""
        self._check_index(index)
        seen = set(self.classes_seen_so_far(index))
        return tuple(c for c in self._classes(self._experiences[index + 1 :]) if c not in seen)

    @property
    def classes(self) -> tuple[int, ...]:
        """All classes of the stream."""
        return self._classes(self._experiences)
