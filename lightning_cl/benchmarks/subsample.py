"""Subsampled streams: the same experiences with fewer training samples each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_cl.benchmarks._common import positive_int, take
from lightning_cl.core.data import _mix_seed, targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience


class SubsampledStream(StreamDataModule):
    """``stream`` with at most ``samples_per_experience`` random training samples per experience.

    The low-data protocols of the online literature (e.g. MIR on SplitMNIST with 1,000 samples
    per experience, Aljundi et al. 2019). The subset of experience ``k`` is drawn from
    ``(seed, k)``, so every rank and every run draws the same; the test stream and the loader
    settings are ``stream``'s. Apply :func:`~lightning_cl.benchmarks.online` on top for an
    online protocol.

    Args:
        stream: the stream to subsample.
        samples_per_experience: training samples kept per experience (all when fewer).
        seed: seed of the draw (defaults to ``stream.seed``).

    Raises:
        TypeError: if ``stream`` is not a StreamDataModule.
        ValueError: if ``samples_per_experience`` is not a positive integer.

    Example:
        >>> import torch
        >>> from lightning_cl.benchmarks import from_tensors
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> small = SubsampledStream(from_tensors(x, y, x, y, num_experiences=2), samples_per_experience=5)
        >>> [len(e) for e in small.train_stream], [len(e) for e in small.test_stream]
        ([5, 5], [20, 20])
    """

    def __init__(self, stream: StreamDataModule, samples_per_experience: int, seed: int | None = None) -> None:
        if not isinstance(stream, StreamDataModule):
            raise TypeError(f"`stream`: expected a StreamDataModule, got {type(stream).__name__}.")
        self.samples_per_experience = positive_int(samples_per_experience, "samples_per_experience")
        super().__init__(
            batch_size=stream.batch_size,
            eval_batch_size=stream.eval_batch_size,
            num_workers=stream.num_workers,
            seed=stream.seed if seed is None else seed,
            shuffle_seed=stream.shuffle_seed,
            pin_memory=stream.pin_memory,
            drop_last=stream.drop_last,
            balance=stream.balance,
        )
        self.stream = stream

    def prepare_data(self) -> None:
        self.stream.prepare_data()

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train = []
        for e in self.stream.train_stream:
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, e.index))
            keep = torch.randperm(len(e), generator=generator)[: self.samples_per_experience].sort().values
            data = take(e.dataset, keep, e.task_label)
            classes = tuple(torch.unique(targets_of(data)).tolist())
            train.append(Experience(e.index, data, classes, e.task_label))
        return train, self.stream.test_stream

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "samples_per_experience": self.samples_per_experience}
