"""Validation streams: part of each train experience held out, validated during its fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from lightning_cl.benchmarks._common import apportion, ratio, take
from lightning_cl.core.data import _mix_seed, in_group, targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream

MODES = ("class_balanced", "random")


def _check_size(validation_size: float | int) -> float | int:
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float)):
        raise TypeError(
            "`validation_size`: expected a fraction in (0, 1) or a number of samples >= 1, "
            f"got {type(validation_size).__name__}."
        )
    if isinstance(validation_size, int):
        if validation_size < 1:
            raise ValueError(f"`validation_size`: expected a number of samples >= 1, got {validation_size}.")
        return validation_size
    return ratio(validation_size, "validation_size", low_open=True, high_open=True)


def validation_indices(
    targets: Tensor, validation_size: float | int, mode: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(train, validation)`` positions of one experience with ``targets``, each sorted.

    A fraction takes ``floor(fraction * n)`` samples (per class with ``class_balanced``); a count
    takes that many, spread over the classes in proportion to their sizes (largest remainder)
    with ``class_balanced``.
    """
    n = len(targets)
    if mode == "random":
        size = validation_size if isinstance(validation_size, int) else int(validation_size * n)
        chosen = torch.randperm(n, generator=generator)[: min(size, n)]
    else:
        classes, counts = torch.unique(targets, return_counts=True)
        if isinstance(validation_size, int):
            per_class = apportion(min(validation_size, n), counts.double())
        else:
            per_class = (validation_size * counts.double()).floor().long()
        picked = []
        for c, k in zip(classes.tolist(), per_class.tolist()):
            members = (targets == c).nonzero().squeeze(1)
            picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
        chosen = torch.cat(picked)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


class ValidationStreamDataModule(StreamDataModule):
    """A stream whose train experiences lose a validation part, validated during their own fit.

    ``train_stream[k]`` is experience ``k`` of ``datamodule`` without its validation samples,
    ``valid_stream[k]`` holds those samples, and ``test_stream`` is ``datamodule``'s.
    :meth:`val_dataloader` serves the validation part of the CURRENT experience only (the one
    the running ``fit`` trains; after a fit, for ``trainer.validate``, the last trained one), so
    Lightning's in-fit validation, ``EarlyStopping`` and ``ModelCheckpoint(monitor=...)`` follow
    the experience being learnt; ``ContinualModule`` resets their "best so far" per experience.
    The validation parts are in their ``"eval"`` transform group (no training augmentation), as
    the test stream is; the loader settings (``balance`` included) are ``datamodule``'s.
    Validation runs only when the user's module defines ``validation_step``.

    The split is a pure function of ``(seed, experience index)``, the same on every rank. Under
    DDP Lightning shards the validation loader with its default sampler (it may repeat up to
    one sample per rank to even out the shards: fine for monitoring, use the test stream for
    exact numbers).

    Args:
        datamodule: the stream to split (its loader settings are reused).
        validation_size: a fraction in (0, 1) of each experience (``floor(fraction * n)``
            samples, per class with ``class_balanced``), or a number of samples per experience.
        mode: ``"class_balanced"`` (stratified: every class gives the same fraction) or
            ``"random"`` (a uniform random subset).
        seed: seed of the split.

    Raises:
        TypeError: if ``datamodule`` is not a StreamDataModule (or has its own train loader, as
            :func:`~lightning_cl.benchmarks.online.online` streams do: split before going online)
            or ``validation_size`` is not a number.
        ValueError: a ``validation_size`` out of range or leaving an experience with no train or no
            validation sample (raised when the streams are built), or an unknown ``mode``.
    """

    def __init__(
        self,
        datamodule: StreamDataModule,
        validation_size: float | int,
        mode: Literal["class_balanced", "random"] = "class_balanced",
        seed: int = 0,
    ) -> None:
        if not isinstance(datamodule, StreamDataModule):
            raise TypeError(f"`datamodule`: expected a StreamDataModule, got {type(datamodule).__name__}.")
        if type(datamodule).train_dataloader is not StreamDataModule.train_dataloader:
            # the split stream trains through the base loader: a custom one would be lost
            raise TypeError(
                f"`datamodule`: {type(datamodule).__name__} builds its own train loader, which a validation split "
                "would drop; split first, then wrap (e.g. online(with_validation_stream(dm, ...), experience_size))."
            )
        if mode not in MODES:
            raise ValueError(f"`mode`: expected one of {list(MODES)}, got {mode!r}.")
        super().__init__(
            batch_size=datamodule.batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            seed=datamodule.seed,
            shuffle_seed=datamodule.shuffle_seed,
            pin_memory=datamodule.pin_memory,
            drop_last=datamodule.drop_last,
            balance=datamodule.balance,
        )
        self.stream = datamodule
        self.validation_size = _check_size(validation_size)
        self.mode = mode
        self.validation_seed = seed
        self._valid_stream: Stream | None = None

    def prepare_data(self) -> None:
        self.stream.prepare_data()

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train: list[Experience] = []
        valid: list[Experience] = []
        for experience in self.stream.train_stream:
            targets = targets_of(experience.dataset)
            generator = torch.Generator().manual_seed(_mix_seed(self.validation_seed, experience.index))
            keep, held = validation_indices(targets, self.validation_size, self.mode, generator)
            for part, name in ((keep, "train"), (held, "validation")):
                if len(part) == 0:
                    raise ValueError(
                        f"`validation_size`: {self.validation_size!r} leaves no {name} sample in experience "
                        f"{experience.index} ({len(targets)} samples, mode {self.mode!r})."
                    )
            for part, out in ((keep, train), (held, valid)):
                classes = tuple(torch.unique(targets[part]).tolist())
                data = take(experience.dataset, part, experience.task_label)
                if out is valid:
                    data = in_group(data, "eval")  # validated as test data is: eval transforms
                out.append(Experience(experience.index, data, classes, experience.task_label))
        self._valid_stream = Stream(valid, "valid")
        return train, self.stream.test_stream

    def _split_settings(self) -> dict[str, Any]:
        return {"validation_size": self.validation_size, "mode": self.mode, "seed": self.validation_seed}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "validation_split": self._split_settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("validation_split")
        if saved is not None and saved != self._split_settings():
            raise ValueError(
                f"The checkpoint is from another validation split: its settings are {saved!r}, "
                f"this {type(self).__name__} has {self._split_settings()!r}."
            )
        super().load_state_dict(state_dict)

    @property
    def valid_stream(self) -> Stream:
        """The validation part of every train experience, in the same order."""
        self._ensure_streams()
        assert self._valid_stream is not None  # for mypy: set by build_streams
        return self._valid_stream

    @property
    def validation_experience(self) -> int:
        """Index of the experience :meth:`val_dataloader` serves: the one being trained, else the last trained."""
        return validation_experience(self)

    def val_dataloader(self) -> DataLoader:
        return current_validation_loader(self, self.valid_stream)


def validation_experience(datamodule: StreamDataModule) -> int:
    """The experience a fit is training, or (between fits) the last one trained; 0 before any."""
    index = datamodule._next if datamodule._active else datamodule._next - 1
    return min(max(index, 0), datamodule.num_experiences - 1)


def current_validation_loader(datamodule: StreamDataModule, valid_stream: Stream) -> DataLoader:
    """The loader of ``valid_stream``'s part for :func:`validation_experience`, in order."""
    experience = valid_stream[validation_experience(datamodule)]
    sampler = SequentialSampler(experience.dataset)  # type: ignore[arg-type]
    return datamodule._loader(experience.dataset, datamodule.eval_batch_size, sampler)


def with_validation_stream(
    datamodule: StreamDataModule,
    *,
    validation_size: float | int,
    mode: Literal["class_balanced", "random"] = "class_balanced",
    seed: int = 0,
) -> ValidationStreamDataModule:
    """Hold out part of every train experience as a validation stream (see :class:`ValidationStreamDataModule`).

    Avalanche's ``benchmark_with_validation_stream`` with ``split_validation_class_balanced`` or
    ``split_validation_random``; here the validation part of the experience being trained is
    also what Lightning validates during its ``fit``.

    Example:
        >>> import torch
        >>> from lightning_cl.benchmarks import from_tensors
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> dm = with_validation_stream(from_tensors(x, y, x, y, num_experiences=2), validation_size=0.25)
        >>> [len(e) for e in dm.train_stream], [len(e) for e in dm.valid_stream]
        ([16, 16], [4, 4])
        >>> dm.valid_stream[0].classes_in_this_experience == dm.train_stream[0].classes_in_this_experience
        True
    """
    return ValidationStreamDataModule(datamodule, validation_size, mode, seed)
