"""Selection strategies: which samples of a group a buffer keeps first.

A strategy ranks candidates: the buffer keeps the first ``count`` of the ranking, and when its
share of the memory shrinks later (a new class arrives) it keeps a prefix of that same ranking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class SelectionStrategy(ABC):
    """Ranks the candidates of one group; the first ones are kept.

    Attributes:
        needs_features: whether :meth:`rank` reads the candidates' features (herding, closest
            to centre) or only their number (random).
    """

    needs_features: bool = False

    @abstractmethod
    def rank(self, count: int, num_candidates: int, features: Tensor | None, generator: torch.Generator) -> Tensor:
        """Positions (into the candidates) of the ``count`` samples to keep, best first."""


class RandomSelection(SelectionStrategy):
    """A uniformly random subset (seeded by the buffer's generator).

    Example:
        >>> RandomSelection().rank(2, 5, None, torch.Generator().manual_seed(0)).shape
        torch.Size([2])
    """

    def rank(self, count: int, num_candidates: int, features: Tensor | None, generator: torch.Generator) -> Tensor:
        return torch.randperm(num_candidates, generator=generator)[:count]


def _normalised(features: Tensor | None, name: str) -> Tensor:
    if features is None or features.dim() != 2:
        got = "none" if features is None else f"shape {tuple(features.shape)}"
        raise ValueError(f"{name}: expected the candidates' features as a [N, D] tensor, got {got}.")
    # iCaRL compares L2-normalised features: the scale of a feature vector carries no class information
    return torch.nn.functional.normalize(features.double(), dim=1)


class HerdingSelection(SelectionStrategy):
    """iCaRL's herding: each pick brings the mean of the picks closest to the mean of the group.

    Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and Representation
    Learning", CVPR 2017 (Algorithm 4). Features are L2-normalised first, as in the paper.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
        >>> HerdingSelection().rank(2, 3, f, torch.Generator()).tolist()
        [2, 0]
    """

    needs_features = True

    def rank(self, count: int, num_candidates: int, features: Tensor | None, generator: torch.Generator) -> Tensor:
        f = _normalised(features, "HerdingSelection")
        mean = f.mean(0)
        chosen: list[int] = []
        total = torch.zeros_like(mean)
        available = torch.ones(num_candidates, dtype=torch.bool)
        for k in range(min(count, num_candidates)):
            # distance to the group mean of the running mean if each candidate were added next
            distance = ((mean - (total + f) / (k + 1)) ** 2).sum(1)
            distance[~available] = torch.inf
            pick = int(torch.argmin(distance))
            chosen.append(pick)
            available[pick] = False
            total += f[pick]
        return torch.tensor(chosen, dtype=torch.long)


class ClosestToCenterSelection(SelectionStrategy):
    """The samples whose features are closest to the group's mean feature.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
        >>> ClosestToCenterSelection().rank(1, 3, f, torch.Generator()).tolist()
        [2]
    """

    needs_features = True

    def rank(self, count: int, num_candidates: int, features: Tensor | None, generator: torch.Generator) -> Tensor:
        f = _normalised(features, "ClosestToCenterSelection")
        distance = ((f - f.mean(0)) ** 2).sum(1)
        return torch.argsort(distance, stable=True)[:count]


SELECTIONS: dict[str, type[SelectionStrategy]] = {
    "random": RandomSelection,
    "herding": HerdingSelection,
    "closest": ClosestToCenterSelection,
}


def selection_strategy(selection: str | SelectionStrategy, name: str = "selection") -> SelectionStrategy:
    """A strategy given by name (``"random"``, ``"herding"``, ``"closest"``) or as an instance."""
    if isinstance(selection, SelectionStrategy):
        return selection
    if isinstance(selection, str) and selection in SELECTIONS:
        return SELECTIONS[selection]()
    raise ValueError(f"`{name}`: expected one of {sorted(SELECTIONS)} or a SelectionStrategy, got {selection!r}.")
