"""Datasets, batching and sampling for streams.

In-memory data sets are held as tensors and batched by index: ``__getitems__`` returns a whole
batch at once (one indexing op, one batched transform) instead of one Python call per sample.
Anything else (a torchvision dataset of PIL images, a user's dataset) takes the per-sample path.

Every dataset of this module carries, per item, its target, an optional task label and any
number of named **attributes** (user metadata such as a ``group`` or ``sample_id`` tensor), kept
aligned through ``subset``, ``relabel``, ``with_transform`` and :class:`ConcatDataset`. Samples
stay ``(x, y)`` or ``(x, y, t)``; attributes join them only when asked (``return_attributes``).
Transforms come in named **groups** (``"train"`` and ``"eval"`` always exist, others may be
declared): the dataset applies its shared ``transform`` and then the transform of its current
group, switched with ``with_group``. A dataset may carry its own ``collate_fn``, which the stream
loaders use instead of :func:`collate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate

if TYPE_CHECKING:  # typing.Self needs Python 3.11
    from typing_extensions import Self

Transform = Callable[[Tensor], Tensor]
Collate = Callable[[Any], Any]

#: The transform groups every dataset has (identity unless given): training and evaluation.
DEFAULT_GROUPS = ("train", "eval")
#: Names an attribute cannot take: they are the dataset's own per-item fields.
RESERVED_ATTRIBUTES = ("targets", "task_labels")


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


def collate_fn_of(dataset: Dataset) -> Collate:
    """The collate function a loader of ``dataset`` should use: its own ``collate_fn``, else :func:`collate`.

    Example:
        >>> collate_fn_of(InMemoryDataset(torch.zeros(2, 1), [0, 1])) is collate
        True
    """
    own = getattr(dataset, "collate_fn", None)
    return collate if own is None else own


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

    # Callable[[Any], Any], not [[Tensor], Tensor]: the CLI reads a class_path for a callable returning
    # Any as "instantiate it and call the instance", for one returning Tensor as "a Tensor subclass"
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
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


# ------------------------------------------------------------------------- argument checks
def _check_callable(value: Any, name: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"`{name}`: expected a callable (or None), got {type(value).__name__}.")
    return value


def _check_attributes(attributes: Mapping[str, Any] | None, n: int, name: str = "attributes") -> dict[str, Tensor]:
    """``attributes`` as a dict of tensors with ``n`` rows each, or an error naming ``name``."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise TypeError(
            f"`{name}`: expected a mapping from names to per-item tensors, got {type(attributes).__name__}."
        )
    checked: dict[str, Tensor] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"`{name}`: expected non-empty string names, got {key!r}.")
        if key in RESERVED_ATTRIBUTES:
            raise ValueError(f"`{name}[{key!r}]`: {key!r} is the dataset's own field; give it as `{key}` instead.")
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"`{name}[{key!r}]`: expected a tensor (one value per item), got {type(value).__name__}."
            ) from error
        if tensor.dim() == 0 or len(tensor) != n:
            raise ValueError(f"`{name}[{key!r}]`: expected {n} values (one per item), got shape {tuple(tensor.shape)}.")
        checked[key] = tensor
    return checked


def _check_groups(transform_groups: Mapping[str, Any] | None) -> dict[str, Any]:
    if transform_groups is None:
        return {}
    if not isinstance(transform_groups, Mapping):
        raise TypeError(
            "`transform_groups`: expected a mapping from group names to transforms, "
            f"got {type(transform_groups).__name__}."
        )
    for key, transform in transform_groups.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"`transform_groups`: expected non-empty string names, got {key!r}.")
        _check_callable(transform, f"transform_groups[{key!r}]")
    return dict(transform_groups)


def _check_group(group: Any, groups: Mapping[str, Any]) -> str:
    known = list(dict.fromkeys([*DEFAULT_GROUPS, *groups]))
    if group not in known:
        raise ValueError(f"`group`: expected one of the dataset's transform groups {known}, got {group!r}.")
    return group


def _check_returned(names: Sequence[str], attributes: Mapping[str, Tensor]) -> tuple[str, ...]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(
            f"`return_attributes`: expected a sequence of attribute names (e.g. a tuple), got {type(names).__name__}."
        )
    unknown = [n for n in names if n not in attributes]
    if unknown:
        raise ValueError(
            f"`return_attributes`: expected names of the dataset's attributes {sorted(attributes)}, got {unknown}."
        )
    return tuple(names)


class _Derived(ABC):
    """The ``with_*`` methods of :class:`InMemoryDataset` and :class:`SubsetDataset`.

    Each returns a new dataset of the same items (sharing storage) with one thing changed,
    through the class's ``_replace``.
    """

    @abstractmethod
    def _replace(self, **changes: Any) -> Self:
        """A dataset of this class with ``changes`` to its fields."""

    @abstractmethod
    def __len__(self) -> int: ...

    def relabel(self, targets: Tensor, task_labels: Tensor | None) -> Self:
        """The same items with new per-item targets and task labels (attributes kept)."""
        return self._replace(targets=targets, task_labels=task_labels)

    def with_transform(self, transform: Callable[[Any], Any] | None, group: str | None = None) -> Self:
        """The same items with ``transform`` added.

        Args:
            transform: a transform (batched for an :class:`InMemoryDataset`, per sample for a
                :class:`SubsetDataset`).
            group: None adds it to the shared transform (every group: after the shared transform,
                before the group's own); a group name adds it after that group's transform only.
        """
        _check_callable(transform, "transform")
        if group is None:
            return self._replace(transform=_compose(self.transform, transform))  # type: ignore[attr-defined]
        return self._replace(transform_groups=_add_to_group(self.transform_groups, group, transform))  # type: ignore[attr-defined]

    def with_group(self, group: str) -> Self:
        """The same items with ``group``'s transforms (``"train"``, ``"eval"`` or a declared group)."""
        return self._replace(group=group)

    def train(self) -> Self:
        """``with_group("train")``."""
        return self.with_group("train")

    def eval(self) -> Self:
        """``with_group("eval")``."""
        return self.with_group("eval")

    def with_attributes(self, attributes: Mapping[str, Tensor]) -> Self:
        """The same items with ``attributes`` added (or replaced, for names it already has)."""
        return self._replace(attributes={**self.attributes, **_check_attributes(attributes, len(self))})  # type: ignore[attr-defined]

    def with_return_attributes(self, names: Sequence[str]) -> Self:
        """The same items, whose samples end with the attributes ``names`` (``()``: none)."""
        return self._replace(return_attributes=names)

    def with_collate_fn(self, collate_fn: Collate | None) -> Self:
        """The same items, whose loaders collate with ``collate_fn``."""
        return self._replace(collate_fn=collate_fn)


class InMemoryDataset(_Derived, Dataset):
    """A dataset of tensors, batched by index: the fast path of every stream.

    ``inputs`` is shared storage; a subset keeps an index tensor into it, never a copy. Targets,
    task labels and ``attributes`` are per item. Transforms take a whole batch ``[B, ...]`` and
    return one: first ``transform`` (shared by every group, e.g. the normalisation), then the
    current ``group``'s transform from ``transform_groups``. ``dataset[i]`` applies them to a
    batch of one, so a single sample is exactly the row of a batch.

    A sample is ``(x, y)``, or ``(x, y, t)`` with task labels, followed by the attributes named in
    ``return_attributes`` (none by default). Every derived dataset (``subset``, ``relabel``,
    ``with_transform``, ``with_group``, ...) keeps the attributes aligned with its items.

    Args:
        inputs: tensor ``[N, ...]``.
        targets: integer class ids, one per item.
        task_labels: optional integer task label per item; when given, samples are ``(x, y, t)``.
        transform: optional batched transform applied to the inputs in every group.
        indices: optional positions into ``inputs`` of the items (defaults to all of ``inputs``).
        attributes: per-item metadata by name, each a tensor ``[len, ...]`` (not ``"targets"`` or
            ``"task_labels"``, the dataset's own fields).
        transform_groups: batched transforms by group name, applied after ``transform`` when their
            group is the current one; ``"train"`` and ``"eval"`` exist even when not given.
        group: the current transform group.
        return_attributes: names of attributes appended to every sample, in this order.
        collate_fn: the collate function loaders of this dataset use (None: :func:`collate`). It
            receives what ``__getitems__`` returns, a :class:`StackedBatch` (a sequence of
            samples whose ``tensors`` are the stacked fields).

    Raises:
        TypeError: ``inputs`` not a tensor, float targets, a transform or ``collate_fn`` that is not
            callable, attributes that are not a mapping of tensors.
        ValueError: per-item fields of the wrong length, an unknown ``group`` or returned attribute.

    Example:
        >>> ds = InMemoryDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 1]), transform=lambda x: x * 10)
        >>> ds[1]
        (tensor([20., 30.]), tensor(1))
        >>> [t.tolist() for t in collate(ds.__getitems__([2, 0]))]
        [[[40.0, 50.0], [0.0, 10.0]], [1, 0]]
        >>> ds = ds.with_attributes({"sample_id": torch.tensor([7, 8, 9])}).subset([2, 0])
        >>> ds.attributes["sample_id"].tolist(), ds.with_return_attributes(["sample_id"])[0][2]
        ([9, 7], tensor(9))
        >>> noisy = ds.with_transform(lambda x: x + 1, group="train")
        >>> noisy[0][0].tolist(), noisy.with_group("eval")[0][0].tolist()
        ([41.0, 51.0], [40.0, 50.0])
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor | Sequence[int],
        task_labels: Tensor | Sequence[int] | None = None,
        transform: Transform | None = None,
        indices: Tensor | Sequence[int] | None = None,
        *,
        attributes: Mapping[str, Tensor] | None = None,
        transform_groups: Mapping[str, Transform | None] | None = None,
        group: str = "train",
        return_attributes: Sequence[str] = (),
        collate_fn: Collate | None = None,
    ) -> None:
        if not isinstance(inputs, Tensor):
            raise TypeError(f"`inputs`: expected a torch.Tensor, got {type(inputs).__name__}.")
        self.inputs = inputs
        self.indices = None if indices is None else _as_index_tensor(indices, "indices")
        self.targets = _as_targets(targets, "targets")
        self.task_labels = None if task_labels is None else _as_targets(task_labels, "task_labels")
        self.transform = _check_callable(transform, "transform")
        n = len(inputs) if self.indices is None else len(self.indices)
        if len(self.targets) != n:
            raise ValueError(f"`targets`: expected {n} values (one per input), got {len(self.targets)}.")
        if self.task_labels is not None and len(self.task_labels) != n:
            raise ValueError(f"`task_labels`: expected {n} values (one per input), got {len(self.task_labels)}.")
        self.attributes = _check_attributes(attributes, n)
        self.transform_groups = _check_groups(transform_groups)
        self.group = _check_group(group, self.transform_groups)
        self.return_attributes = _check_returned(return_attributes, self.attributes)
        self.collate_fn = _check_callable(collate_fn, "collate_fn")
        # the whole transform of the current group, composed once: the fast path calls one callable
        self._pipeline = _compose(self.transform, self.transform_groups.get(self.group))

    def __len__(self) -> int:
        return len(self.targets)

    def _fetch(self, index: Tensor) -> tuple[Tensor, ...]:
        rows = index if self.indices is None else self.indices[index]
        x = self.inputs[rows]
        if self._pipeline is not None:
            x = self._pipeline(x)
        if self.task_labels is None and not self.return_attributes:
            return x, self.targets[index]
        fields = [x, self.targets[index]]
        if self.task_labels is not None:
            fields.append(self.task_labels[index])
        fields += [self.attributes[name][index] for name in self.return_attributes]
        return tuple(fields)

    def __getitems__(self, indices: Sequence[int]) -> StackedBatch:
        return StackedBatch(self._fetch(torch.as_tensor(indices, dtype=torch.long)))

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} items.")
        return tuple(t[0] for t in self._fetch(torch.tensor([i % len(self)])))

    def _replace(self, **changes: Any) -> InMemoryDataset:
        fields: dict[str, Any] = {
            "inputs": self.inputs,
            "targets": self.targets,
            "task_labels": self.task_labels,
            "transform": self.transform,
            "indices": self.indices,
            "attributes": self.attributes,
            "transform_groups": self.transform_groups,
            "group": self.group,
            "return_attributes": self.return_attributes,
            "collate_fn": self.collate_fn,
        }
        fields.update(changes)
        return InMemoryDataset(**fields)

    def subset(self, indices: Tensor | Sequence[int]) -> InMemoryDataset:
        """The items at ``indices`` (positions in this dataset), sharing the input storage."""
        index = _as_index_tensor(indices, "indices")
        rows = index if self.indices is None else self.indices[index]
        task = None if self.task_labels is None else self.task_labels[index]
        attributes = {name: value[index] for name, value in self.attributes.items()}
        return self._replace(targets=self.targets[index], task_labels=task, indices=rows, attributes=attributes)


def _add_to_group(groups: Mapping[str, Any], group: str, transform: Any) -> dict[str, Any]:
    if not isinstance(group, str) or not group:
        raise TypeError(f"`group`: expected a group name (a non-empty string), got {group!r}.")
    updated = dict(groups)
    updated[group] = _compose(updated.get(group), transform)
    return updated


class SubsetDataset(_Derived, Dataset):
    """Items of any map-style dataset, with their targets (possibly relabelled) known up front.

    This is the per-sample path: ``dataset[i]`` reads ``base[indices[i]]``, keeps its input,
    replaces its target by ``targets[i]``, applies the shared ``transform`` and then the current
    group's transform to the input (one sample, not a batch), appends the task label when there
    is one and the attributes named in ``return_attributes``. Attributes, transform groups and
    ``collate_fn`` behave as in :class:`InMemoryDataset`; ``collate_fn`` defaults to ``base``'s.

    Args:
        base: the dataset the items come from; its samples are ``x`` or ``(x, ...)``.
        indices: positions in ``base`` of the items.
        targets: integer class ids, one per item.
        task_labels: optional integer task label per item.
        transform: optional per-sample transform applied in every group.
        attributes: per-item metadata by name, each a tensor ``[len, ...]``.
        transform_groups: per-sample transforms by group name, applied after ``transform``.
        group: the current transform group.
        return_attributes: names of attributes appended to every sample, in this order.
        collate_fn: the collate function loaders of this dataset use (None: ``base``'s, else
            :func:`collate`).

    Example:
        >>> base = [(torch.tensor([float(i)]), 0) for i in range(4)]
        >>> ds = SubsetDataset(base, [3, 1], [1, 0], attributes={"group": torch.tensor([5, 6])})
        >>> ds.with_return_attributes(["group"])[0]
        (tensor([3.]), tensor(1), tensor(5))
    """

    def __init__(
        self,
        base: Dataset,
        indices: Tensor | Sequence[int],
        targets: Tensor | Sequence[int],
        task_labels: Tensor | Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        attributes: Mapping[str, Tensor] | None = None,
        transform_groups: Mapping[str, Callable[[Any], Any] | None] | None = None,
        group: str = "train",
        return_attributes: Sequence[str] = (),
        collate_fn: Collate | None = None,
    ) -> None:
        self.base = base
        self.indices = _as_index_tensor(indices, "indices")
        self.targets = _as_targets(targets, "targets")
        self.task_labels = None if task_labels is None else _as_targets(task_labels, "task_labels")
        self.transform = _check_callable(transform, "transform")
        n = len(self.indices)
        if len(self.targets) != n:
            raise ValueError(f"`targets`: expected {n} values, got {len(self.targets)}.")
        if self.task_labels is not None and len(self.task_labels) != n:
            raise ValueError(f"`task_labels`: expected {n} values, got {len(self.task_labels)}.")
        self.attributes = _check_attributes(attributes, n)
        self.transform_groups = _check_groups(transform_groups)
        self.group = _check_group(group, self.transform_groups)
        self.return_attributes = _check_returned(return_attributes, self.attributes)
        self.collate_fn = _check_callable(
            getattr(base, "collate_fn", None) if collate_fn is None else collate_fn, "collate_fn"
        )
        self._pipeline = _compose(self.transform, self.transform_groups.get(self.group))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        sample = self.base[int(self.indices[i])]
        x = sample[0] if isinstance(sample, (tuple, list)) else sample
        if self._pipeline is not None:
            x = self._pipeline(x)
        fields = [x, self.targets[i]]
        if self.task_labels is not None:
            fields.append(self.task_labels[i])
        fields += [self.attributes[name][i] for name in self.return_attributes]
        return tuple(fields)

    def _replace(self, **changes: Any) -> SubsetDataset:
        fields: dict[str, Any] = {
            "base": self.base,
            "indices": self.indices,
            "targets": self.targets,
            "task_labels": self.task_labels,
            "transform": self.transform,
            "attributes": self.attributes,
            "transform_groups": self.transform_groups,
            "group": self.group,
            "return_attributes": self.return_attributes,
            "collate_fn": self.collate_fn,
        }
        fields.update(changes)
        return SubsetDataset(**fields)

    def subset(self, indices: Tensor | Sequence[int]) -> SubsetDataset:
        """The items at ``indices`` (positions in this dataset)."""
        index = _as_index_tensor(indices, "indices")
        task = None if self.task_labels is None else self.task_labels[index]
        attributes = {name: value[index] for name, value in self.attributes.items()}
        return self._replace(
            indices=self.indices[index], targets=self.targets[index], task_labels=task, attributes=attributes
        )


def _subsettable(dataset: Dataset) -> Any:
    """``dataset`` if it has ``subset``, else all of it as a :class:`SubsetDataset` (targets and task labels read)."""
    if hasattr(dataset, "subset"):
        return dataset
    targets = targets_of(dataset)
    return SubsetDataset(dataset, torch.arange(len(targets)), targets, task_labels_of(dataset))


class ConcatDataset(Dataset):
    """Datasets one after the other, batched part by part when the parts support it.

    A batch of indices is split by part, each part fetches its share in one ``__getitems__``
    call (or per sample), and the result is put back in the requested order.

    ``targets``, ``task_labels`` (when every part has them) and ``attributes`` (those every part
    has) are the parts' ones, concatenated. ``subset`` keeps the fast path (each part takes its
    share); ``with_transform``, ``with_group``, ``with_attributes`` and ``with_return_attributes``
    apply to every part. Loaders use ``collate_fn``: by default the parts', which must agree.

    Args:
        datasets: the parts (empty ones are dropped).
        order: a permutation of the concatenation's positions: item ``i`` is position
            ``order[i]`` (None: the parts' order). ``subset`` sets it.
        collate_fn: the collate function loaders use (None: the parts' common one).

    Raises:
        ValueError: no non-empty part, parts whose samples have different numbers of fields, an
            ``order`` that is not a permutation, parts with different ``collate_fn`` and none given.

    Example:
        >>> a = InMemoryDataset(torch.zeros(2, 1), [0, 1], attributes={"group": torch.tensor([0, 0])})
        >>> b = InMemoryDataset(torch.ones(3, 1), [2, 3, 4], attributes={"group": torch.tensor([1, 1, 1])})
        >>> both = ConcatDataset([a, b])
        >>> both.targets.tolist(), both.attributes["group"].tolist()
        ([0, 1, 2, 3, 4], [0, 0, 1, 1, 1])
        >>> part = both.subset([4, 0])
        >>> part.targets.tolist(), part.attributes["group"].tolist()
        ([4, 0], [1, 0])
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        *,
        order: Tensor | Sequence[int] | None = None,
        collate_fn: Collate | None = None,
    ) -> None:
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
        total = int(self.cumulative_sizes[-1])
        self.order = None if order is None else _as_index_tensor(order, "order")
        if self.order is not None and not torch.equal(self.order.sort().values, torch.arange(total)):
            raise ValueError(f"`order`: expected a permutation of 0..{total - 1} (the parts' positions).")
        if collate_fn is None:
            own = {id(f): f for f in (getattr(d, "collate_fn", None) for d in self.datasets)}
            if len(own) > 1:
                raise ValueError(
                    "`datasets`: the parts carry different `collate_fn` "
                    f"({[getattr(f, '__name__', f) for f in own.values()]}); pass `collate_fn` to choose one."
                )
            collate_fn = next(iter(own.values()))
        self.collate_fn = _check_callable(collate_fn, "collate_fn")

    def _ordered(self, values: Tensor) -> Tensor:
        return values if self.order is None else values[self.order]

    @property
    def targets(self) -> Tensor:
        return self._ordered(torch.cat([targets_of(d) for d in self.datasets]))

    @property
    def task_labels(self) -> Tensor | None:
        """The task label of every item, or None when a part has none."""
        parts = [getattr(d, "task_labels", None) for d in self.datasets]
        if any(p is None for p in parts):
            return None
        return self._ordered(torch.cat([_as_targets(p, "task_labels") for p in parts]))  # type: ignore[arg-type]

    @property
    def attributes(self) -> dict[str, Tensor]:
        """The attributes every part has, concatenated (those of only some parts are left out)."""
        parts = [getattr(d, "attributes", {}) for d in self.datasets]
        names = [name for name in parts[0] if all(name in p for p in parts[1:])]
        return {name: self._ordered(torch.cat([p[name] for p in parts])) for name in names}

    def __len__(self) -> int:
        return int(self.cumulative_sizes[-1]) if self.order is None else len(self.order)

    def _locate(self, index: Tensor) -> tuple[Tensor, Tensor]:
        part = torch.searchsorted(self.cumulative_sizes, index, right=True)
        start = torch.cat([torch.zeros(1, dtype=torch.long), self.cumulative_sizes[:-1]])
        return part, index - start[part]

    def _normalise(self, index: Tensor) -> Tensor:
        n = len(self)
        if bool(((index < -n) | (index >= n)).any()):
            raise IndexError(f"indices {index.tolist()} go beyond a dataset of {n} items.")
        index = index % n  # Python's negative indices count from the end
        return index if self.order is None else self.order[index]

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

    def _each(self, method: str, *args: Any) -> ConcatDataset:
        parts = []
        for k, d in enumerate(self.datasets):
            apply = getattr(d, method, None)
            if apply is None:
                raise TypeError(f"ConcatDataset.{method}: part {k} ({type(d).__name__}) has no `{method}`.")
            parts.append(apply(*args))
        return ConcatDataset(parts, order=self.order, collate_fn=self.collate_fn)

    def subset(self, indices: Tensor | Sequence[int]) -> ConcatDataset:
        """The items at ``indices``: each part's share as its own subset, in the requested order."""
        position = self._normalise(_as_index_tensor(indices, "indices"))
        part, local = self._locate(position)
        parts, placed = [], []
        for p in torch.unique(part).tolist():
            mask = part == p
            parts.append(_subsettable(self.datasets[p]).subset(local[mask]))
            placed.append(mask.nonzero().squeeze(1))
        if not parts:
            raise ValueError("`indices`: expected at least one index (a ConcatDataset cannot be empty), got none.")
        # the new parts hold the items grouped by part; `order` puts them back as requested
        order = torch.argsort(torch.cat(placed))
        identity = torch.equal(order, torch.arange(len(order)))
        return ConcatDataset(parts, order=None if identity else order, collate_fn=self.collate_fn)

    def with_transform(self, transform: Callable[[Any], Any] | None, group: str | None = None) -> ConcatDataset:
        """Every part with ``transform`` added (see :meth:`InMemoryDataset.with_transform`)."""
        return self._each("with_transform", transform, group)

    def with_group(self, group: str) -> ConcatDataset:
        """Every part that has transform groups in ``group`` (the others are kept as they are)."""
        parts = [in_group(d, group) for d in self.datasets]
        return ConcatDataset(parts, order=self.order, collate_fn=self.collate_fn)

    def train(self) -> ConcatDataset:
        """``with_group("train")``."""
        return self.with_group("train")

    def eval(self) -> ConcatDataset:
        """``with_group("eval")``."""
        return self.with_group("eval")

    def with_return_attributes(self, names: Sequence[str]) -> ConcatDataset:
        """Every part's samples end with the attributes ``names``."""
        return self._each("with_return_attributes", names)

    def with_attributes(self, attributes: Mapping[str, Tensor]) -> ConcatDataset:
        """The same items with ``attributes`` (one value per item, in this dataset's order) added."""
        checked = _check_attributes(attributes, len(self))
        if self.order is not None:
            inverse = torch.argsort(self.order)
            checked = {name: value[inverse] for name, value in checked.items()}  # back to the parts' order
        sizes = torch.diff(self.cumulative_sizes, prepend=torch.zeros(1, dtype=torch.long)).tolist()
        pieces = {name: torch.split(value, sizes) for name, value in checked.items()}
        parts = []
        for k, d in enumerate(self.datasets):
            apply = getattr(d, "with_attributes", None)
            if apply is None:
                raise TypeError(
                    f"ConcatDataset.with_attributes: part {k} ({type(d).__name__}) has no `with_attributes`."
                )
            parts.append(apply({name: chunks[k] for name, chunks in pieces.items()}))
        return ConcatDataset(parts, order=self.order, collate_fn=self.collate_fn)

    def with_collate_fn(self, collate_fn: Collate | None) -> ConcatDataset:
        """The same items, whose loaders collate with ``collate_fn``."""
        return ConcatDataset(self.datasets, order=self.order, collate_fn=collate_fn)


def in_group(dataset: Dataset, group: str) -> Dataset:
    """``dataset`` with the transforms of ``group`` when it has transform groups, else ``dataset`` itself.

    Example:
        >>> ds = InMemoryDataset(torch.zeros(2, 1), [0, 1], transform_groups={"train": lambda x: x + 1})
        >>> in_group(ds, "eval").group, in_group([1, 2], "eval")
        ('eval', [1, 2])
    """
    switch = getattr(dataset, "with_group", None)
    if switch is None or getattr(dataset, "group", None) == group:
        return dataset
    return switch(group)


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


def task_labels_of(dataset: Dataset) -> Tensor | None:
    """The integer task label of every item, or None when the samples carry none.

    Uses ``dataset.task_labels`` when the dataset has the attribute (ours; None there means no
    task labels); otherwise reads every sample once and takes the third field of ``(x, y, t)``
    samples.

    Example:
        >>> task_labels_of(InMemoryDataset(torch.zeros(3, 1), [0, 1, 2], [1, 1, 0])).tolist()
        [1, 1, 0]
        >>> task_labels_of([(torch.zeros(1), 0, 4)]).tolist(), task_labels_of([(torch.zeros(1), 0)])
        ([4], None)
    """
    if hasattr(dataset, "task_labels"):
        labels = dataset.task_labels
        return None if labels is None else _as_targets(labels, "dataset.task_labels")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0 or len(dataset[0]) < 3:
        return None
    return _as_targets(torch.stack([torch.as_tensor(dataset[i][2]) for i in range(n)]), "dataset task labels")


def group_labels(dataset: Dataset, by: str, name: str = "balance") -> Tensor:
    """The group of every item of ``dataset``: its class (``"class"``), its task label (``"task"``)
    or the value of one of its attributes (any other ``by``), as a 1-D tensor.

    Args:
        dataset: a map-style dataset.
        by: ``"class"``, ``"task"`` or an attribute name.
        name: the argument named in errors.

    Raises:
        ValueError: ``by`` is ``"task"`` and the samples have no task labels, or is neither
            ``"class"``, ``"task"`` nor an attribute of ``dataset``, or names an attribute that is
            not one value per item.

    Example:
        >>> ds = InMemoryDataset(torch.zeros(3, 1), [0, 1, 1], attributes={"site": torch.tensor([2, 2, 5])})
        >>> group_labels(ds, "class").tolist(), group_labels(ds, "site").tolist()
        ([0, 1, 1], [2, 2, 5])
    """
    if by == "class":
        return targets_of(dataset)
    if by == "task":
        labels = task_labels_of(dataset)
        if labels is None:
            raise ValueError(
                f"`{name}`: 'task' balances task labels, but the {type(dataset).__name__} has none "
                "(build the stream with task_labels=True, or balance 'class' or an attribute)."
            )
        return labels
    attributes = getattr(dataset, "attributes", {})
    if by not in attributes:
        raise ValueError(
            f"`{name}`: expected 'task', 'class' or the name of an attribute of the "
            f"{type(dataset).__name__} ({sorted(attributes)}), got {by!r}."
        )
    values = torch.as_tensor(attributes[by])
    if values.dim() != 1:
        raise ValueError(
            f"`{name}`: the attribute {by!r} must hold one value per item to group by, got shape {tuple(values.shape)}."
        )
    return values


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


class ShardedOrder(DistributedSampler):
    """Rank ``r``'s share of another sampler's order: its entries ``r, r + W, ...`` (``W`` processes).

    Under DDP the training loaders of a stream draw their seeded order (``SeededRandomSampler``)
    through this: step ``k`` of ``W`` processes with batch ``B`` then covers entries
    ``[k*B*W, (k+1)*B*W)`` of the order, exactly the samples of step ``k`` of one process with
    batch ``B*W``, and DDP's average of the ranks' mean gradients is that batch's mean gradient.
    Lightning would instead wrap the sampler in a ``DistributedSamplerWrapper`` that reshuffles it.
    Being a ``DistributedSampler`` keeps Lightning from doing so. The order is padded with its first
    entries to a multiple of ``W``, like any DDP loader (so the last step may repeat a few samples).

    Args:
        inner: the sampler whose order is shared out; ``set_epoch`` is passed on to it.
        num_replicas: number of processes.
        rank: this process.

    Example:
        >>> list(ShardedOrder([4, 0, 3, 1, 2], num_replicas=2, rank=0)), list(ShardedOrder([4, 0, 3, 1, 2], 2, 1))
        ([4, 3, 2], [0, 1, 4])
    """

    def __init__(self, inner: Sampler[int] | Sequence[int], num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank`: expected 0 <= rank < num_replicas ({num_replicas}), got {rank}.")
        # DistributedSampler.__init__ wants a dataset and the process group: set its fields directly
        self.inner = inner
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = -(-len(inner) // num_replicas)  # type: ignore[arg-type]
        self.total_size = self.num_samples * num_replicas
        self.shuffle, self.drop_last, self.seed, self.epoch = False, False, 0, 0

    def __iter__(self) -> Iterator[int]:
        order = list(self.inner)
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch = getattr(self.inner, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class BalancedSampler(DistributedSampler):
    """Equal draws from every group (task, class, or any attribute), a pure function of ``(seed, experience, epoch)``.

    The epoch is a sequence of rounds; each round holds one item of every group, in a random
    order, so any ``k * num_groups`` consecutive indices (a batch whose size is a multiple of
    the number of groups) hold exactly ``k`` items of each group, and any window at most one
    more or less. Each group is read in fresh random permutations, repeated as often as needed:
    small groups are oversampled, large ones see a different random part every epoch. Like
    :class:`SeededRandomSampler` it never touches the global RNG, so every rank and a resumed run
    draw the same order.

    Under DDP (``num_replicas`` processes) rank ``r`` reads entries ``r, r + W, ...`` of that
    order, so the ``B * W`` samples of one optimizer step are consecutive entries: balanced when
    ``B * W`` is a multiple of the number of groups. It is a ``DistributedSampler`` (padded like
    one) so that Lightning keeps it rather than wrapping it in a shuffling one.

    Args:
        groups: the group of every item (any values; one group per distinct value).
        seed: the shuffle seed.
        experience: the experience index (part of the seed).
        length: number of indices per epoch over all processes (default: the number of items,
            so an epoch has as many batches as an unbalanced one).
        num_replicas: number of processes.
        rank: this process.

    Raises:
        ValueError: ``groups`` empty or not 1-D, a ``length`` below 1.

    Example:
        >>> groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
        >>> order = list(BalancedSampler(groups, seed=0, experience=0))
        >>> len(order), sorted(groups[order[:6]].tolist())
        (8, [0, 0, 1, 1, 2, 2])
    """

    def __init__(
        self,
        groups: Tensor | Sequence[int],
        seed: int,
        experience: int,
        length: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        values = torch.as_tensor(groups)
        if values.dim() != 1 or len(values) == 0:
            raise ValueError(
                f"`groups`: expected a non-empty 1-D tensor (one group per item), got shape {tuple(values.shape)}."
            )
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"`length`: expected a positive integer (or None), got {length!r}.")
        self.length = len(values) if length is None else length
        super().__init__(range(self.length), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)  # type: ignore[arg-type]
        _, inverse = torch.unique(values, return_inverse=True)
        # items of each group, by increasing group value: fixed, so the order depends on the seed only
        self.members = [(inverse == g).nonzero().squeeze(1) for g in range(int(inverse.max()) + 1)]
        self.experience = experience

    @property
    def num_groups(self) -> int:
        return len(self.members)

    def order(self) -> Tensor:
        """The whole epoch's order, over all processes (a function of seed, experience and epoch)."""
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.experience, self.epoch))
        rounds = -(-self.length // self.num_groups)
        columns = []
        for members in self.members:
            repeats = -(-rounds // len(members))
            draws = torch.cat([torch.randperm(len(members), generator=generator) for _ in range(repeats)])
            columns.append(members[draws[:rounds]])
        table = torch.stack(columns, 1)  # [rounds, groups]: round r draws table[r, g] from group g
        within = torch.rand(rounds, self.num_groups, generator=generator).argsort(1)  # a random order per round
        return table.gather(1, within).reshape(-1)[: self.length]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[list(super().__iter__())].tolist())
