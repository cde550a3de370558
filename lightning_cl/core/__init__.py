"""The stream, the wrapped module, the CL callback protocol and the driver."""

from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.data import (
    BalancedSampler,
    ConcatDataset,
    InMemoryDataset,
    SeededRandomSampler,
    ShardedOrder,
    StackedBatch,
    SubsetDataset,
    collate,
    collate_fn_of,
    group_labels,
    in_group,
    targets_of,
    task_labels_of,
)
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.result import StreamResult
from lightning_cl.core.runner import fit_stream

__all__ = [
    "BalancedSampler",
    "ConcatDataset",
    "ContinualCallback",
    "ContinualModule",
    "Experience",
    "InMemoryDataset",
    "JointData",
    "SeededRandomSampler",
    "ShardedOrder",
    "StackedBatch",
    "Stream",
    "StreamDataModule",
    "StreamResult",
    "SubsetDataset",
    "TrainingStep",
    "collate",
    "collate_fn_of",
    "fit_stream",
    "group_labels",
    "in_group",
    "targets_of",
    "task_labels_of",
]
