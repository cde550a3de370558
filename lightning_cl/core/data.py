"""Datasets, batching and sampling for streams.

In-memory data sets are held as tensors and batched by index: ``__getitems__`` returns a whole
batch at once (one indexing op, one batched transform) instead of one Python call per sample.
Anything else (a torchvision dataset of PIL images, a user's dataset) takes the per-sample path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

Transform = Callable[[Tensor], Tensor]


class StackedBatch(Sequence[tuple[Tensor, ...]]):
    """A batch already stacked by a dataset's ``__getitems__``.

    :func:`collate` passes it through as it is; PyTorch's default collate sees a sequence of
    samples and still works (slowly), so the datasets stay usable with any ``DataLoader``.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:  # type: ignore[override]
        return tuple(t[i] for t in self.tensors)


def collate(data: Any) -> Any:
    """Collate function of the stream loaders: stacked batches pass through, the rest is collated."""
    if isinstance(data, StackedBatch):
        return list(data.tensors)
    return default_collate(data)


def _as_index_tensor(indices: Sequence[int] | Tensor, name: str) -> Tensor:
    index = torch.as_tensor(indices, dtype=torch.long)
    if index.dim() != 1:
        raise ValueError(f"`{name}`: expected a 1-D sequence of indices, got shape {tuple(index.shape)}.")
    return index


class Compose:
    """Batched transforms applied one after the other (picklable, unlike a lambda).

    Args:
        transforms: the transforms, in the order they apply.

    Example:
        >>> Compose([lambda x: x + 1, lambda x: x * 10])(torch.tensor([1.0]))
        tensor([20.])
    """

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]]) -> None:
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
            raise TypeError(f"`transforms`: expected a sequence of callables, got {type(transforms).__name__}.")
        for k, transform in enumerate(transforms):
            if not callable(transform):
                raise TypeError(f"`transforms[{k}]`: expected a callable, got {type(transform).__name__}.")
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _compose(first: Transform | None, second: Transform | None) -> Transform | None:
    if first is None:
        return second
    if second is None:
        return first
    return Compose([first, second])  # a class, not a lambda: loaders with spawned workers pickle it


class InMemoryDataset(Dataset):
    """A dataset of tensors, batched by index: the fast path of every stream.

    ``inputs`` is shared storage; a subset keeps an index tensor into it, never a copy. Targets
    and task labels are per item. ``transform`` takes a whole batch ``[B, ...]`` and returns one;
    ``dataset[i]`` applies it to a batch of one, so a single sample is exactly the row of a batch.

    Args:
        inputs: tensor ``[N, ...]``.
        targets: integer class ids, one per item.
        task_labels: optional integer task label per item; when given, samples are ``(x, y, t)``.
        transform: optional batched transform applied to the inputs.
        indices: optional positions into ``inputs`` of the items (defaults to all of ``inputs``).

    Example:
        >>> ds = InMemoryDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 1]), transform=lambda x: x * 10)
        >>> ds[1]
        (tensor([20., 30.]), tensor(1))
        >>> [t.tolist() for t in collate(ds.__getitems__([2, 0]))]
        [[[40.0, 50.0], [0.0, 10.0]], [1, 0]]
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor | Sequence[int],
        task_labels: Tensor | Sequence[int] | None = None,
        transform: Transform | None = None,
        indices: Tensor | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(inputs, Tensor):
            raise TypeError(f"`inputs`: expected a torch.Tensor, got {type(inputs).__name__}.")
        self.inputs = inputs
        self.indices = None if indices is None else _as_index_tensor(indices, "indices")
        self.targets = _as_targets(targets, "targets")
        self.task_labels = None if task_labels is None else _as_targets(task_labels, "task_labels")
        self.transform = transform
        n = len(inputs) if self.indices is None else len(self.indices)
        if len(self.targets) != n:
            raise ValueError(f"`targets`: expected {n} values (one per input), got {len(self.targets)}.")
        if self.task_labels is not None and len(self.task_labels) != n:
            raise ValueError(f"`task_labels`: expected {n} values (one per input), got {len(self.task_labels)}.")

    def __len__(self) -> int:
        return len(self.targets)

    def _fetch(self, index: Tensor) -> tuple[Tensor, ...]:
        rows = index if self.indices is None else self.indices[index]
        x = self.inputs[rows]
        if self.transform is not None:
            x = self.transform(x)
        if self.task_labels is None:
            return x, self.targets[index]
        return x, self.targets[index], self.task_labels[index]

    def __getitems__(self, indices: Sequence[int]) -> StackedBatch:
        return StackedBatch(self._fetch(torch.as_tensor(indices, dtype=torch.long)))

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} items.")
        return tuple(t[0] for t in self._fetch(torch.tensor([i % len(self)])))

    def subset(self, indices: Tensor | Sequence[int]) -> InMemoryDataset:
        """The items at ``indices`` (positions in this dataset), sharing the input storage."""
        index = _as_index_tensor(indices, "indices")
        rows = index if self.indices is None else self.indices[index]
        task = None if self.task_labels is None else self.task_labels[index]
        return InMemoryDataset(self.inputs, self.targets[index], task, self.transform, rows)

    def relabel(self, targets: Tensor, task_labels: Tensor | None) -> InMemoryDataset:
        """The same items with new per-item targets and task labels."""
        return InMemoryDataset(self.inputs, targets, task_labels, self.transform, self.indices)

    def with_transform(self, transform: Transform | None) -> InMemoryDataset:
        """The same items with ``transform`` applied after this dataset's own transform."""
        return InMemoryDataset(
            self.inputs, self.targets, self.task_labels, _compose(self.transform, transform), self.indices
        )


class SubsetDataset(Dataset):
    """Items of any map-style dataset, with their targets (possibly relabelled) known up front.

    This is the per-sample path: ``dataset[i]`` reads ``base[indices[i]]``, keeps its input,
    replaces its target by ``targets[i]``, applies ``transform`` to the input (one sample, not a
    batch) and appends the task label when there is one.
    """

    def __init__(
        self,
        base: Dataset,
        indices: Tensor | Sequence[int],
        targets: Tensor | Sequence[int],
        task_labels: Tensor | Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.base = base
        self.indices = _as_index_tensor(indices, "indices")
        self.targets = _as_targets(targets, "targets")
        self.task_labels = None if task_labels is None else _as_targets(task_labels, "task_labels")
        self.transform = transform
        if len(self.targets) != len(self.indices):
            raise ValueError(f"`targets`: expected {len(self.indices)} values, got {len(self.targets)}.")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        sample = self.base[int(self.indices[i])]
        x = sample[0] if isinstance(sample, (tuple, list)) else sample
        if self.transform is not None:
            x = self.transform(x)
        if self.task_labels is None:
            return x, self.targets[i]
        return x, self.targets[i], self.task_labels[i]

    def subset(self, indices: Tensor | Sequence[int]) -> SubsetDataset:
        index = _as_index_tensor(indices, "indices")
        task = None if self.task_labels is None else self.task_labels[index]
        return SubsetDataset(self.base, self.indices[index], self.targets[index], task, self.transform)

    def relabel(self, targets: Tensor, task_labels: Tensor | None) -> SubsetDataset:
        return SubsetDataset(self.base, self.indices, targets, task_labels, self.transform)

    def with_transform(self, transform: Callable[[Any], Any] | None) -> SubsetDataset:
        return SubsetDataset(
            self.base, self.indices, self.targets, self.task_labels, _compose(self.transform, transform)
        )


class ConcatDataset(Dataset):
    """Datasets one after the other, batched part by part when the parts support it.

    A batch of indices is split by part, each part fetches its share in one ``__getitems__``
    call (or per sample), and the result is put back in the requested order.
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = [d for d in datasets if len(d) > 0]  # type: ignore[arg-type]
        if not self.datasets:
            raise ValueError("`datasets`: expected at least one non-empty dataset, got none.")
        sizes = torch.tensor([len(d) for d in self.datasets])  # type: ignore[arg-type]
        self.cumulative_sizes = sizes.cumsum(0)
        arity = {len(d[0]) for d in self.datasets}
        if len(arity) != 1:
            raise ValueError(
                "`datasets`: expected every dataset to yield samples of the same form, got samples with "
                f"{sorted(arity)} fields (mixing data with and without task labels?)."
            )

    @property
    def targets(self) -> Tensor:
        return torch.cat([targets_of(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.cumulative_sizes[-1])

    def _locate(self, index: Tensor) -> tuple[Tensor, Tensor]:
        part = torch.searchsorted(self.cumulative_sizes, index, right=True)
        start = torch.cat([torch.zeros(1, dtype=torch.long), self.cumulative_sizes[:-1]])
        return part, index - start[part]

    def _normalise(self, index: Tensor) -> Tensor:
        n = len(self)
        if bool(((index < -n) | (index >= n)).any()):
            raise IndexError(f"indices {index.tolist()} go beyond a dataset of {n} items.")
        return index % n  # Python's negative indices count from the end

    def __getitem__(self, i: int) -> Any:
        part, local = self._locate(self._normalise(torch.tensor([i])))
        return self.datasets[int(part)][int(local)]

    def __getitems__(self, indices: Sequence[int]) -> StackedBatch:
        part, local = self._locate(self._normalise(torch.as_tensor(indices, dtype=torch.long)))
        order, pieces = [], []
        for p in torch.unique(part).tolist():
            mask = part == p
            order.append(mask.nonzero().squeeze(1))
            sub, wanted = self.datasets[p], local[mask].tolist()
            if hasattr(sub, "__getitems__"):
                pieces.append(collate(sub.__getitems__(wanted)))
            else:
                pieces.append(default_collate([sub[j] for j in wanted]))
        inverse = torch.argsort(torch.cat(order))
        return StackedBatch([torch.cat(column)[inverse] for column in zip(*pieces)])


def _as_targets(values: Tensor | Sequence[int], name: str) -> Tensor:
    t = torch.as_tensor(values)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"`{name}`: expected integer class ids, got dtype {t.dtype}.")
    return t.long().reshape(-1)


def targets_of(dataset: Dataset) -> Tensor:
    """The integer target of every item of a map-style dataset, as a LongTensor.

    Uses ``dataset.targets`` when present (torchvision datasets, ours); otherwise reads every
    sample once, expecting ``(input, target, ...)`` tuples.

    Raises:
        TypeError: if the targets are not integers.
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        read = [torch.as_tensor(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
        return _as_targets(torch.stack(read) if read else torch.zeros(0, dtype=torch.long), "dataset targets")
    return _as_targets(targets, "dataset.targets")


def _mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers, so that (seed, experience, epoch) never collide."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


class SeededRandomSampler(Sampler[int]):
    """Random order that is a pure function of ``(seed, experience, epoch)``.

    Lightning calls ``set_epoch`` every epoch (with the global epoch), and a resumed run draws
    the same order as an uninterrupted one, on every rank; the global RNG is never touched.

    Args:
        num_samples: size of the dataset.
        seed: the shuffle seed.
        experience: the experience index (part of the seed).
        length: number of indices per epoch; more than ``num_samples`` repeats whole fresh
            permutations (for joint loaders that must last as long as the current one).
    """

    def __init__(self, num_samples: int, seed: int, experience: int, length: int | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"`num_samples`: expected at least 1, got {num_samples}.")
        self.num_samples = num_samples
        self.seed = seed
        self.experience = experience
        self.length = num_samples if length is None else length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.experience, self.epoch))
        rounds = -(-self.length // self.num_samples)
        order = torch.cat([torch.randperm(self.num_samples, generator=generator) for _ in range(rounds)])
        return iter(order[: self.length].tolist())
