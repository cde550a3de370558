"""Joint training: the offline upper bound of a stream."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_cl.core.data import ConcatDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience


class JointTraining(StreamDataModule):
    """All the train experiences of ``stream`` as ONE experience; the test stream unchanged.

    Training on it with the same Trainer and model gives the upper bound a CL method is compared
    with: its accuracy matrix has one row (``R[0, j]`` on each original test experience) and its
    ``average_accuracy`` is the joint accuracy. Give the Trainer the total epoch budget you want
    for the joint run. The loader settings (``balance`` included, e.g. ``"task"`` to draw the
    experiences' task labels equally) are ``stream``'s.

    Args:
        stream: the stream to train jointly on (its loader settings are reused).

    Example:
        >>> import torch
        >>> from lightning_cl.benchmarks import from_tensors
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> joint = JointTraining(from_tensors(x, y, x, y, num_experiences=2))
        >>> joint.num_experiences, len(joint.test_stream), len(joint.train_stream[0])
        (1, 2, 40)
    """

    def __init__(self, stream: StreamDataModule) -> None:
        if not isinstance(stream, StreamDataModule):
            raise TypeError(f"`stream`: expected a StreamDataModule, got {type(stream).__name__}.")
        super().__init__(
            batch_size=stream.batch_size,
            eval_batch_size=stream.eval_batch_size,
            num_workers=stream.num_workers,
            seed=stream.seed,
            shuffle_seed=stream.shuffle_seed,
            pin_memory=stream.pin_memory,
            drop_last=stream.drop_last,
            balance=stream.balance,
        )
        self.stream = stream

    def prepare_data(self) -> None:
        self.stream.prepare_data()

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train = self.stream.train_stream
        everything = ConcatDataset([e.dataset for e in train])
        return [Experience(0, everything, train.classes, 0)], self.stream.test_stream
