"""Online streams: one pass over each experience in mini-experiences, ONE ``fit`` per experience."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_cl.benchmarks._common import positive_int, take
from lightning_cl.benchmarks.with_validation_stream import ValidationStreamDataModule, current_validation_loader
from lightning_cl.core.callback import continual_callbacks
from lightning_cl.core.data import SeededRandomSampler, _mix_seed, in_group, targets_of
from lightning_cl.core.datamodule import StreamDataModule, shard
from lightning_cl.core.experience import Experience, Stream


class OnlineStreamDataModule(StreamDataModule):
    """Each experience of ``datamodule`` seen once, in mini-experiences of ``experience_size`` samples.

    The stream keeps the experiences of ``datamodule`` and trains each with ONE ``trainer.fit``
    of exactly one epoch (whatever the Trainer's ``max_epochs`` / ``max_steps``: a warning says
    so when they differ) over its samples in a fixed order: mini-experience ``m`` of experience
    ``k`` is samples ``[m * experience_size, (m + 1) * experience_size)`` of that order (the last
    one may be shorter). That order is the experience's own, or with ``shuffle`` a permutation
    drawn once from ``(seed, k)``. Batches never straddle two mini-experiences: ``batch_size``
    (by default ``experience_size``, one optimizer step per mini-experience as in Avalanche's
    online protocol) must divide ``experience_size``, and under DDP ``batch_size * world_size``
    must (every step then consumes ``batch_size * world_size`` consecutive samples; a short last
    mini-experience is padded by the distributed sampler with the experience's first samples,
    as every DDP loader pads). This is Avalanche's ``split_online_stream`` without its cost:
    Avalanche calls ``train`` once per mini-experience, thousands of calls; here the boundaries
    are marks inside one loop (``bench/online_speed.py``: 4x faster with a quiet Trainer, 22x
    with Lightning's default logger and checkpointing, on online SplitMNIST).

    With ``train_passes`` ``p > 1`` each mini-experience is trained ``p`` times in a row before
    the next one comes (Avalanche's ``OnlineNaive(train_passes=p)``, which trains every
    mini-experience for ``p`` epochs): the sampler repeats the positions of each mini-experience
    ``p`` times, in the same order, inside the same single epoch and the same ``fit``; an
    experience then takes ``p`` times as many steps. Batches still never straddle two
    mini-experiences; only in a last, shorter mini-experience (when ``experience_size`` does not
    divide the experience) may one batch hold the end of a pass and the start of the next.

    Mini-experiences are what a CL method sees as its experiences, as in Avalanche's online
    protocol (there every mini-experience is an experience):

    * ``current_mini_experience`` is the index, within the current experience, of the
      mini-experience being trained (None outside training); :meth:`mini_experiences` gives them
      as a :class:`~lightning_cl.core.experience.Stream`;
    * every callback of the Trainer that defines ``on_mini_experience_start(trainer, pl_module,
      mini_experience)`` or ``on_mini_experience_end(trainer, pl_module, mini_experience)`` is
      called at each boundary, from ``on_train_batch_start`` of the batch that opens the
      mini-experience (after the other callbacks' ``on_train_batch_start``), and the last one
      ends in ``on_train_end``, before the experience's ``on_experience_end``. A
      :class:`MiniExperienceBoundaries` callback does the calling; the datamodule adds it to the
      Trainer in ``setup("fit")`` when it is not there. The replay methods update their memory
      there (:class:`~lightning_cl.callbacks.Replay`, ``DER``, ``ERACE``, ``MIR``).

    ``access_task_boundaries`` says whether methods also learn where the ORIGINAL experiences
    begin and end (Avalanche's ``split_online_stream(..., access_task_boundaries=...)``). With
    ``True`` (the default) the CL callbacks' ``on_experience_start`` / ``on_experience_end`` run
    once per original experience. With ``False`` the stream is boundary-free for the methods:
    those two hooks are not called on CL callbacks (ContinualModule checks
    ``datamodule.access_task_boundaries``), so a method sees only the sequence of
    mini-experiences. What cannot be hidden: training is still ONE ``fit`` per original
    experience (each followed by the usual evaluation), so Lightning's own fit hooks still mark
    them, and model adaptation (:class:`~lightning_cl.core.dynamic.DynamicModule`) still happens
    when a fit starts, since new parameters must exist before the optimizer does.

    CL methods may add ``joint_datasets`` (replay drawn alongside each batch), but a
    ``train_dataset`` that changes the number of samples is an error (positions would no longer
    be mini-experiences). The test stream is ``datamodule``'s; a validation stream
    (:func:`~lightning_cl.benchmarks.with_validation_stream.with_validation_stream` applied
    before) is kept, and validated on the current experience.

    Args:
        datamodule: the stream to go through online (its loader settings are reused).
        experience_size: samples per mini-experience, at least 1.
        shuffle: permute each experience once (seeded) before cutting it.
        seed: seed of that permutation (defaults to ``datamodule.seed``).
        batch_size: training batch size, a divisor of ``experience_size`` (defaults to it).
        access_task_boundaries: tell CL methods where the original experiences begin and end
            (see above); mini-experience boundaries are always known.
        train_passes: passes over each mini-experience before the next, at least 1.

    Raises:
        TypeError: if ``datamodule`` is not a StreamDataModule, or ``access_task_boundaries`` is
            not a bool.
        ValueError: an ``experience_size`` or ``train_passes`` below 1, or a ``batch_size`` that
            does not divide ``experience_size``; when the train loader is built, a ``balance``
            (an online stream keeps its order).
    """

    def __init__(
        self,
        datamodule: StreamDataModule,
        experience_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
        access_task_boundaries: bool = True,
        train_passes: int = 1,
    ) -> None:
        if not isinstance(datamodule, StreamDataModule):
            raise TypeError(f"`datamodule`: expected a StreamDataModule, got {type(datamodule).__name__}.")
        experience_size = positive_int(experience_size, "experience_size")
        train_passes = positive_int(train_passes, "train_passes")
        if not isinstance(access_task_boundaries, bool):
            raise TypeError(f"`access_task_boundaries`: expected a bool, got {type(access_task_boundaries).__name__}.")
        batch = experience_size if batch_size is None else positive_int(batch_size, "batch_size")
        if experience_size % batch:
            raise ValueError(
                f"`batch_size`: expected a divisor of `experience_size` ({experience_size}) so that no batch "
                f"straddles two mini-experiences, got {batch}."
            )
        super().__init__(
            batch_size=batch,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            seed=datamodule.seed,
            shuffle_seed=datamodule.shuffle_seed,
            pin_memory=datamodule.pin_memory,
        )
        self.stream = datamodule
        self.experience_size = experience_size
        self.shuffle = shuffle
        self.order_seed = datamodule.seed if seed is None else seed
        self.access_task_boundaries = access_task_boundaries
        self.train_passes = train_passes
        self._current_mini: int | None = None
        self._mini: dict[int, Stream] = {}

    @property
    def current_mini_experience(self) -> int | None:
        """The mini-experience being trained, within the current experience (None outside training)."""
        return self._current_mini

    @current_mini_experience.setter
    def current_mini_experience(self, value: int | None) -> None:
        self._current_mini = value

    def prepare_data(self) -> None:
        self.stream.prepare_data()

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if stage == "fit" and trainer is not None:
            callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
            if not any(isinstance(c, MiniExperienceBoundaries) for c in callbacks):
                callbacks.append(MiniExperienceBoundaries())

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train = []
        for experience in self.stream.train_stream:
            data = experience.dataset
            if self.shuffle:
                generator = torch.Generator().manual_seed(_mix_seed(self.order_seed, experience.index))
                data = take(data, torch.randperm(len(experience), generator=generator), experience.task_label)
            train.append(
                Experience(experience.index, data, experience.classes_in_this_experience, experience.task_label)
            )
        return train, self.stream.test_stream

    def _online_settings(self) -> dict[str, Any]:
        return {
            "experience_size": self.experience_size,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.order_seed,
            "train_passes": self.train_passes,
            "access_task_boundaries": self.access_task_boundaries,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "online": self._online_settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("online")
        # settings added later are absent from older checkpoints: read them with their defaults
        defaults = {"train_passes": 1, "access_task_boundaries": True}
        if saved is not None and {**defaults, **saved} != self._online_settings():
            raise ValueError(
                f"The checkpoint is from another online stream: its settings are {saved!r}, "
                f"this {type(self).__name__} has {self._online_settings()!r}."
            )
        super().load_state_dict(state_dict)

    # --------------------------------------------------------------------- mini-experiences
    def num_mini_experiences(self, index: int) -> int:
        """Number of mini-experiences of experience ``index``."""
        return -(-len(self.train_stream[index]) // self.experience_size)

    def mini_experiences(self, index: int) -> Stream:
        """The mini-experiences of experience ``index``, in training order (indices from 0)."""
        if index not in self._mini:
            experience = self.train_stream[index]
            targets = targets_of(experience.dataset)
            minis = []
            for m in range(self.num_mini_experiences(index)):
                part = torch.arange(m * self.experience_size, min((m + 1) * self.experience_size, len(targets)))
                classes = tuple(torch.unique(targets[part]).tolist())
                data = take(experience.dataset, part, experience.task_label)
                minis.append(Experience(m, data, classes, experience.task_label))
            self._mini[index] = Stream(minis, f"mini-experiences of train experience {index}")
        return self._mini[index]

    def _world_size(self) -> int:
        trainer = self.trainer
        return 1 if trainer is None else trainer.world_size

    def training_order(self, size: int) -> Tensor:
        """Positions of an experience of ``size`` samples in training order: each mini-experience
        ``train_passes`` times in a row.

        Example:
            >>> import torch
            >>> from lightning_cl.benchmarks import from_tensors
            >>> x, y = torch.randn(8, 2), torch.arange(8) % 2
            >>> dm = online(from_tensors(x, y, x, y, num_experiences=1), 3, train_passes=2)
            >>> dm.training_order(7).tolist()
            [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 6]
        """
        positions = torch.arange(size)
        if self.train_passes == 1:
            return positions
        minis = torch.split(positions, self.experience_size)
        return torch.cat([m.repeat(self.train_passes) for m in minis])

    def _ordered_sampler(self, order: Tensor) -> OrderedSampler:
        trainer = self.trainer
        world, rank = (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)
        return OrderedSampler(order, num_replicas=world, rank=rank)

    def mini_experience_of(self, batch_idx: int) -> int:
        """The mini-experience that training batch ``batch_idx`` of the current experience belongs to."""
        return batch_idx * self.batch_size * self._world_size() // (self.experience_size * self.train_passes)

    # ------------------------------------------------------------------------------ training
    def _begin_fit(self, trainer: L.Trainer) -> tuple[Experience | None, bool]:
        if self._epochs_per_experience is None:
            loop = trainer.fit_loop
            if loop.max_epochs != 1 or loop.max_steps != -1:
                rank_zero_warn(
                    f"{type(self).__name__} trains ONE pass per experience; the Trainer's max_epochs="
                    f"{loop.max_epochs} and max_steps={loop.max_steps} are ignored."
                )
            self._epochs_per_experience, self._steps_per_experience = 1, -1
        return super()._begin_fit(trainer)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        if self.balance is not None:
            raise ValueError(
                f"`balance`: an online stream trains its samples once, in a fixed order, so it cannot balance "
                f"them; got {self.balance!r} (use None)."
            )
        experience = self.train_stream[min(self._next, self.num_experiences - 1)]
        dataset: Dataset = experience.dataset
        callbacks = continual_callbacks(self.trainer)
        for callback in callbacks:
            replaced = callback.train_dataset(self, experience, dataset)
            if len(replaced) != len(dataset):  # type: ignore[arg-type]
                raise ValueError(
                    f"{type(callback).__name__}.train_dataset: an online stream trains each sample once, in "
                    f"mini-experiences of its positions, but it turned {len(dataset)} samples into "  # type: ignore[arg-type]
                    f"{len(replaced)}; draw extra data alongside with `joint_datasets` instead."  # type: ignore[arg-type]
                )
            dataset = replaced
        dataset = in_group(dataset, "train")
        per_step = self.batch_size * self._world_size()
        if self.experience_size % per_step:
            raise ValueError(
                f"`experience_size`: {self.experience_size} is not a multiple of batch_size x world_size "
                f"({self.batch_size} x {self._world_size()}), so steps would straddle mini-experiences."
            )
        main = self._loader(dataset, self.batch_size, self._ordered_sampler(self.training_order(len(dataset))))  # type: ignore[arg-type]
        extras: dict[str, DataLoader] = {}
        seed = self._sampler_seed()
        for callback in callbacks:
            for name, (joint, batch_size) in callback.joint_datasets(self, experience).items():
                if name == "current" or name in extras:
                    raise ValueError(f"{type(callback).__name__}.joint_datasets: the name {name!r} is already taken.")
                joint = in_group(joint, "train")
                # `main` is already this rank's share: every rank's worth, shared out, gives each
                # rank as many batches as `main`
                world, rank = (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)
                length = len(main) * batch_size * world
                sampler = SeededRandomSampler(len(joint), seed, experience.index, length=length)  # type: ignore[arg-type]
                extras[name] = self._loader(joint, batch_size, shard(sampler, world, rank))
        self._joint_keys = tuple(extras)
        if not extras:
            return main
        return CombinedLoader({"current": main, **extras}, mode="max_size_cycle")


class OrderedSampler(DistributedSampler):
    """The positions ``order``, in that order; under DDP rank ``r`` reads entries ``r, r + W, ...``.

    So step ``k`` of ``W`` processes with batch ``B`` covers entries ``[k*B*W, (k+1)*B*W)``: a run of
    consecutive positions, as on one process. It is a ``DistributedSampler`` (without shuffling,
    padded with the first entries like any DDP loader) so that Lightning keeps it instead of
    swapping in a shuffled one.

    Args:
        order: the positions to yield (e.g. :meth:`OnlineStreamDataModule.training_order`).
        num_replicas: number of processes.
        rank: this process.

    Example:
        >>> list(OrderedSampler(torch.tensor([2, 0, 1]))), list(OrderedSampler(torch.tensor([2, 0, 1]), 2, 1))
        ([2, 0, 1], [0, 2])
    """

    def __init__(self, order: Tensor, num_replicas: int = 1, rank: int = 0) -> None:
        self.order = torch.as_tensor(order, dtype=torch.long)
        super().__init__(range(len(self.order)), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[list(super().__iter__())].tolist())


class OnlineValidationStreamDataModule(OnlineStreamDataModule):
    """An online stream over a :class:`ValidationStreamDataModule`, validating the current experience."""

    stream: ValidationStreamDataModule

    @property
    def valid_stream(self) -> Stream:
        """The validation part of every train experience (of the datamodule gone online)."""
        return self.stream.valid_stream

    def val_dataloader(self) -> DataLoader:
        return current_validation_loader(self, self.valid_stream)


def _dispatch(trainer: L.Trainer, hook: str, pl_module: L.LightningModule, experience: Experience) -> None:
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning's callback connector
        method = getattr(callback, hook, None)
        if callable(method):
            method(trainer, pl_module, experience)


class MiniExperienceBoundaries(L.Callback):
    """Calls the callbacks' ``on_mini_experience_start`` / ``on_mini_experience_end`` in an online stream.

    :class:`OnlineStreamDataModule` adds one to the Trainer by itself; with another datamodule it
    does nothing.
    """

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(dm, OnlineStreamDataModule):
            return
        index = dm.mini_experience_of(batch_idx)
        if index == dm.current_mini_experience:
            return
        self._end(trainer, pl_module, dm)
        dm.current_mini_experience = index
        _dispatch(trainer, "on_mini_experience_start", pl_module, dm.mini_experiences(dm.current_experience)[index])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if isinstance(dm, OnlineStreamDataModule):
            self._end(trainer, pl_module, dm)

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, dm: OnlineStreamDataModule) -> None:
        index = dm.current_mini_experience
        if index is not None:
            dm.current_mini_experience = None
            _dispatch(trainer, "on_mini_experience_end", pl_module, dm.mini_experiences(dm.current_experience)[index])


def online(
    datamodule: StreamDataModule,
    experience_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    access_task_boundaries: bool = True,
    train_passes: int = 1,
) -> OnlineStreamDataModule:
    """An online stream: one pass over each experience in mini-experiences (see :class:`OnlineStreamDataModule`).

    Example:
        >>> import torch
        >>> from lightning_cl.benchmarks import from_tensors
        >>> x, y = torch.randn(40, 3), torch.arange(40) % 4
        >>> dm = online(from_tensors(x, y, x, y, num_experiences=2), experience_size=8)
        >>> dm.num_experiences, dm.num_mini_experiences(0), [len(e) for e in dm.mini_experiences(0)]
        (2, 3, [8, 8, 4])
    """
    kind = (
        OnlineValidationStreamDataModule
        if isinstance(datamodule, ValidationStreamDataModule)
        else OnlineStreamDataModule
    )
    return kind(
        datamodule,
        experience_size,
        shuffle=shuffle,
        seed=seed,
        batch_size=batch_size,
        access_task_boundaries=access_task_boundaries,
        train_passes=train_passes,
    )
