"""Buffers that split the memory between groups (classes, experiences or tasks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_cl.buffers.base import Buffer, Candidates, FeatureFn
from lightning_cl.buffers.selection import RandomSelection, SelectionStrategy, selection_strategy

GROUPS = ("class", "experience", "task", "none")


def group_quotas(available: Tensor, memory_size: int, num_groups: int | None = None) -> Tensor:
    """How many samples each group keeps.

    With ``num_groups`` every group gets a fixed ``memory_size // num_groups`` (a known total
    number of groups). Otherwise the memory is shared equally by the groups present, and the
    share a small group cannot fill goes to the others (water filling), so the buffer is full
    whenever enough samples were offered.

    Example:
        >>> group_quotas(torch.tensor([2, 100, 100]), 10).tolist()
        [2, 4, 4]
    """
    if num_groups is not None:
        return torch.clamp(available, max=memory_size // num_groups)
    quotas = torch.zeros_like(available)
    left, open_groups = memory_size, torch.ones(len(available), dtype=torch.bool)
    while left > 0 and bool(open_groups.any()):
        share, extra = divmod(left, int(open_groups.sum()))
        want = torch.zeros_like(available)
        want[open_groups] = share
        ranks = open_groups.nonzero().squeeze(1)
        want[ranks[:extra]] += 1  # the remainder to the first groups, deterministically
        given = torch.minimum(want, available - quotas)
        quotas += given
        left -= int(given.sum())
        open_groups &= quotas < available
        if int(given.sum()) == 0:
            break
    return quotas


class ParametricBuffer(Buffer):
    """A memory split between groups, each filled by a selection strategy.

    Avalanche's ``ParametricBuffer``: on each update the groups that received new samples
    rank their old and new samples again (``selection``), then every group keeps the first
    ``quota`` of its ranking (:func:`group_quotas`). A group that is not offered new samples
    keeps a prefix of its old ranking as its quota shrinks, so it never changes otherwise. With
    random selection each group is a reservoir (as Avalanche's ``ClassBalancedBuffer``): every
    sample draws a random key when offered and a group keeps its largest keys, so each sample
    the group was ever offered is kept with the same probability, however many updates came.

    Args:
        memory_size: the most samples kept, over all groups.
        groupby: ``"class"``, ``"experience"``, ``"task"`` or ``"none"`` (one group).
        selection: ``"random"``, ``"herding"``, ``"closest"`` or a
            :class:`~lightning_cl.buffers.selection.SelectionStrategy`. Herding and closest
            need the candidates' features: the CL method passes ``features`` to ``update``.
        num_groups: the total number of groups, when known: each then keeps at most
            ``memory_size // num_groups`` from the start. By default the memory is shared by
            the groups seen so far.
        seed: seed of the random selection.

    Example:
        >>> import torch
        >>> from lightning_cl.buffers.base import Candidates
        >>> buffer = ParametricBuffer(memory_size=4, groupby="class")
        >>> y, zeros = torch.tensor([0, 0, 0, 1, 1, 1]), torch.zeros(6, dtype=torch.long)
        >>> buffer.update(Candidates(zeros, torch.arange(6), y, zeros))
        >>> buffer.slots.targets.tolist()
        [0, 0, 1, 1]
    """

    def __init__(
        self,
        memory_size: int,
        groupby: str = "class",
        selection: str | SelectionStrategy = "random",
        num_groups: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(memory_size, seed)
        if groupby not in GROUPS:
            raise ValueError(f"`groupby`: expected one of {list(GROUPS)}, got {groupby!r}.")
        if num_groups is not None and (
            isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= memory_size
        ):
            raise ValueError(
                f"`num_groups`: expected None or an integer in [1, memory_size={memory_size}], got {num_groups!r}."
            )
        self.groupby = groupby
        self.selection = selection_strategy(selection)
        self.num_groups = num_groups
        self.keys = torch.zeros(0, dtype=torch.float64)  # the random selection's reservoir keys

    def _groups(self, c: Candidates) -> Tensor:
        if self.groupby == "class":
            return c.targets
        if self.groupby == "experience":
            return c.experience
        if self.groupby == "task":
            return c.task_labels
        return torch.zeros_like(c.targets)

    def update(
        self,
        candidates: Candidates,
        extras: Mapping[str, Tensor] | None = None,
        features: FeatureFn | None = None,
    ) -> None:
        if self.selection.needs_features and features is None:
            raise ValueError(
                f"{type(self).__name__}: selection {type(self.selection).__name__} ranks samples by their "
                "features, but `update` got no `features` function."
            )
        old = len(self)
        pool, merged = self._pool(candidates, extras)
        groups = self._groups(pool)
        ids = torch.unique(groups)
        touched = set(torch.unique(groups[old:]).tolist())
        available = torch.tensor([int((groups == g).sum()) for g in ids.tolist()])
        if self.num_groups is not None and len(ids) > self.num_groups:
            raise ValueError(
                f"{type(self).__name__}: {len(ids)} {self.groupby} groups were offered, more than num_groups="
                f"{self.num_groups}."
            )
        quotas = group_quotas(available, self.memory_size, self.num_groups)
        new_keys = torch.rand(len(candidates), generator=self._generator(-1), dtype=torch.float64)
        keys = torch.cat([self.keys, new_keys])
        keep = []
        for g, quota in zip(ids.tolist(), quotas.tolist()):
            members = (groups == g).nonzero().squeeze(1)  # old slots first, in their ranking order
            if g not in touched:
                keep.append(members[:quota])
            elif isinstance(self.selection, RandomSelection):
                # a reservoir per group: the largest random keys, so every sample the group was
                # ever offered stays with the same probability (not a bias to recent updates)
                keep.append(members[torch.argsort(keys[members], descending=True, stable=True)[:quota]])
            else:
                f = features(pool.select(members)) if self.selection.needs_features else None  # type: ignore[misc]
                ranking = self.selection.rank(quota, len(members), f, self._generator(g))
                keep.append(members[ranking.cpu()])
        kept = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
        self.keys = keys[kept]
        self._set(pool, merged, kept)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "groupby": self.groupby, "keys": self.keys.clone()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        saved = state_dict.get("groupby", self.groupby)
        if saved != self.groupby:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved buffer groups by {saved!r}, this one by "
                f"{self.groupby!r}."
            )
        super().load_state_dict(state_dict)
        keys = state_dict.get("keys")
        self.keys = torch.zeros(len(self), dtype=torch.float64) if keys is None else torch.as_tensor(keys).double()


class ClassBalancedBuffer(ParametricBuffer):
    """The same number of samples for every class seen so far (or of ``total_num_classes``).

    Example:
        >>> ClassBalancedBuffer(memory_size=100, selection="herding").groupby
        'class'
    """

    def __init__(
        self,
        memory_size: int,
        selection: str | SelectionStrategy = "random",
        total_num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(memory_size, "class", selection, total_num_classes, seed)


class ExperienceBalancedBuffer(ParametricBuffer):
    """The same number of samples for every experience seen so far (or of ``num_experiences``).

    Example:
        >>> ExperienceBalancedBuffer(memory_size=100).groupby
        'experience'
    """

    def __init__(
        self,
        memory_size: int,
        selection: str | SelectionStrategy = "random",
        num_experiences: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(memory_size, "experience", selection, num_experiences, seed)
