"""The stream, the wrapped module, the CL callback protocol and the driver."""

from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.data import (
    ConcatDataset,
    InMemoryDataset,
    SeededRandomSampler,
    StackedBatch,
    SubsetDataset,
    collate,
    targets_of,
)
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.result import StreamResult
from lightning_cl.core.runner import fit_stream

__all__ = [
    "ConcatDataset",
    "ContinualCallback",
    "ContinualModule",
    "Experience",
    "InMemoryDataset",
    "JointData",
    "SeededRandomSampler",
    "StackedBatch",
    "Stream",
    "StreamDataModule",
    "StreamResult",
    "SubsetDataset",
    "TrainingStep",
    "collate",
    "fit_stream",
    "targets_of",
]
