"""Cumulative: train each experience on all the data seen so far."""

from __future__ import annotations

from torch.utils.data import Dataset

from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.data import ConcatDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience


class Cumulative(ContinualCallback):
    """Cumulative training: experience ``k`` is trained on experiences ``0..k`` together.

    The usual upper-bound baseline of incremental training (e.g. Lomonaco & Maltoni, "CORe50: a
    New Dataset and Benchmark for Continuous Object Recognition", CoRL 2017). It keeps no copy of
    the data: earlier experiences are read from the stream itself, so it has no state.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[Cumulative()], logger=False)
    """

    def train_dataset(self, datamodule: StreamDataModule, experience: Experience, dataset: Dataset) -> Dataset:
        earlier = [e.dataset for e in datamodule.train_stream[: experience.index]]
        return ConcatDataset([*earlier, dataset]) if earlier else dataset
