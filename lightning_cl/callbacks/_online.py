"""Helpers of the methods that act on every incoming batch (GSS): where a batch's samples sit in
their experience, and reading stream samples by position."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_cl.buffers.base import Candidates
from lightning_cl.buffers.base import read_samples as read_grouped
from lightning_cl.core.data import collate_fn_of, in_group
from lightning_cl.core.experience import Stream


def current_loader(trainer: L.Trainer) -> DataLoader:
    """The loader of the current experience's own batches (``"current"`` when joint loaders ride along)."""
    loaders = trainer.train_dataloader
    loader = loaders["current"] if isinstance(loaders, Mapping) else loaders
    if not isinstance(loader, DataLoader):
        raise TypeError(f"expected the training loader to be a DataLoader, got {type(loader).__name__}.")
    return loader


class BatchPositions:
    """The positions, in the training dataset, of the samples of each training batch.

    A batch carries its samples, not where they come from. The stream's samplers are pure
    functions of ``(seed, experience, epoch)`` (:class:`~lightning_cl.core.data.SeededRandomSampler`,
    the online stream's ordered sampler, and the distributed wrappers Lightning puts around them),
    so iterating the loader's sampler again gives the order the loader reads this epoch: batch
    ``k`` holds entries ``[k * batch_size, (k + 1) * batch_size)`` of it. The order is read once
    per epoch and loader. Nothing is added to the batch, so the other callbacks' ``prepare_batch``
    and the user's ``training_step`` see it unchanged.

    Args:
        owner: the method's name, for error messages.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._key: tuple[int, int, int] | None = None
        self._order = torch.zeros(0, dtype=torch.long)

    def __call__(self, trainer: L.Trainer, batch_idx: int, size: int) -> Tensor:
        """Positions of the ``size`` samples of batch ``batch_idx`` of the current epoch."""
        loader = current_loader(trainer)
        if loader.batch_size is None:
            raise TypeError(
                f"{self.owner}: the training loader has no fixed batch_size (a batch_sampler?), so the position "
                "of a batch's samples in the experience cannot be told."
            )
        key = (id(loader.sampler), trainer.current_epoch, id(loader))
        if key != self._key:
            self._order = torch.as_tensor(list(iter(loader.sampler)), dtype=torch.long)
            self._key = key
        start = batch_idx * loader.batch_size
        positions = self._order[start : start + size]
        if len(positions) != size:
            raise RuntimeError(
                f"{self.owner}: batch {batch_idx} of {size} samples lies beyond the {len(self._order)} indices the "
                "loader's sampler gives this epoch; the batches do not follow the sampler's order."
            )
        return positions


def read_samples(stream: Stream, candidates: Candidates, device: torch.device | str = "cpu") -> list[Tensor]:
    """The samples at ``candidates`` (experience, position) of ``stream``, as one batch in their order.

    They are read with the ``"eval"`` transforms (no augmentation): the methods measure them.

    Raises:
        ValueError: if ``candidates`` is empty.
    """
    if not len(candidates):
        raise ValueError("read_samples: no candidates to read.")
    data, order = read_grouped(stream, candidates)
    data = in_group(data, "eval")
    items = list(range(len(order)))
    getitems = getattr(data, "__getitems__", None)
    batch = collate_fn_of(data)(getitems(items) if getitems else [data[i] for i in items])
    # rows come grouped by experience: put them back in the candidates' order
    inverse = torch.argsort(order)
    return [torch.as_tensor(t)[inverse].to(device) for t in batch]
