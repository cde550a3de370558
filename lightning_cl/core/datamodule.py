"""StreamDataModule: a LightningDataModule that hands out one experience per ``trainer.fit``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from lightning_cl.core.callback import continual_callbacks
from lightning_cl.core.data import (
    BalancedSampler,
    SeededRandomSampler,
    ShardedOrder,
    collate_fn_of,
    group_labels,
    in_group,
)
from lightning_cl.core.experience import Experience, Stream


def _check_balance(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(
            f"`balance`: expected None, 'task', 'class' or the name of a dataset attribute, got {value!r}."
        )
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
    return value


class StreamDataModule(L.LightningDataModule):
    """A train stream and a test stream of experiences, as a LightningDataModule.

    Each ``trainer.fit(model, datamodule=dm)`` trains the next experience of the train stream
    (``current_experience``); ``trainer.test`` evaluates every experience of the test stream, one
    dataloader per experience, so ``dataloader_idx`` is the experience index. The position in the
    stream is part of ``state_dict`` and so of every Lightning checkpoint.

    The model must be a :class:`~lightning_cl.ContinualModule`, which moves the stream forward and
    makes each ``fit`` train ``max_epochs`` (or ``max_steps``) more on its experience.

    Subclasses that read data from disk override :meth:`build_streams`; it is called once, lazily.

    Loaders. The training loader draws the current experience (after the CL callbacks'
    ``train_dataset``, e.g. earlier experiences added by a cumulative method) in a random order
    that is a pure function of ``(shuffle_seed, experience, epoch)``. Datasets given by the
    callbacks' ``joint_datasets`` (a replay memory, say) become loaders of their own, drawn
    alongside: the batch is a ``CombinedLoader`` of ``{"current": ..., name: ...}`` in
    ``max_size_cycle`` mode, the current loader setting the epoch length. With ``balance``, the
    training loader (not the joint ones) draws equally from every group instead: ``"task"`` (task
    labels), ``"class"`` (targets) or the name of a per-item attribute of the training dataset
    (see :class:`~lightning_cl.core.data.InMemoryDataset`); a batch whose size is a multiple of the
    number of groups holds as many items of each (:class:`~lightning_cl.core.data.BalancedSampler`;
    under DDP, the samples of one step over all processes), small groups oversampled, with as many
    batches per epoch as unbalanced. Training data (joint datasets included) is put in its
    ``"train"`` transform group and test data in its ``"eval"`` group (datasets with transform
    groups), and each loader collates with its dataset's ``collate_fn`` when it has one.

    Args:
        train_stream: the experiences to train on, in order.
        test_stream: the experiences to evaluate on (often the same split of the test set).
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: worker processes per loader.
        seed: the seed the stream was built with (class order, permutations); recorded in
            ``state_dict`` and hyperparameters.
        shuffle_seed: seed of the training order; each epoch's order is a function of
            ``(shuffle_seed, experience, epoch)``. Defaults to the seed of ``seed_everything``
            (``PL_GLOBAL_SEED``), or 0. The seed actually used is recorded in ``state_dict``
            (``"shuffle_seed"``) and, once a training loader is built, in ``hparams``.
        pin_memory: passed to the loaders.
        drop_last: drop the last incomplete training batch.
        balance: None (plain shuffle), ``"task"``, ``"class"`` or an attribute name: balance the
            training loader over those groups (see above). It may also be set later
            (``dm.balance = "class"``); an unknown name is a ValueError when the loader is built.

    Raises:
        ValueError: a non-positive ``batch_size`` / ``eval_batch_size``, a negative
            ``num_workers``, only one of the two streams, a ``balance`` that is not a name.
    """

    def __init__(
        self,
        train_stream: Sequence[Experience] | None = None,
        test_stream: Sequence[Experience] | None = None,
        *,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        balance: str | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.eval_batch_size = _positive_int(eval_batch_size or batch_size, "eval_batch_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers`: expected an integer >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_seed = shuffle_seed
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.balance = balance
        if (train_stream is None) != (test_stream is None):
            raise ValueError("`train_stream` and `test_stream`: give both or neither (subclasses build them).")
        self._train_stream = None if train_stream is None else _as_stream(train_stream, "train")
        self._test_stream = None if test_stream is None else _as_stream(test_stream, "test")
        self._next = 0  # experiences fully trained; the index the next fit trains
        self._active = False  # a fit has begun `_next` and it has not ended yet
        self._restore_only = False  # set by fit_stream for a fit that only restores a checkpoint
        self._step_limit_held = False  # see _apply_limits
        self._epochs_per_experience: int | None = None
        self._steps_per_experience: int | None = None
        self._target_epoch = -1
        self._target_step = -1
        self._joint_keys: tuple[str, ...] = ()

    @property
    def balance(self) -> str | None:
        """What the training loader balances: None, ``"task"``, ``"class"`` or an attribute name."""
        return self._balance

    @balance.setter
    def balance(self, value: str | None) -> None:
        self._balance = _check_balance(value)

    # ----------------------------------------------------------------------------------- streams
    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        """Build ``(train_stream, test_stream)``; subclasses that load data override this."""
        raise TypeError(
            f"{type(self).__name__}: `train_stream` and `test_stream` were not given and "
            "`build_streams` is not implemented; pass the streams or subclass and override it."
        )

    def _ensure_streams(self) -> None:
        if self._train_stream is None or self._test_stream is None:
            train, test = self.build_streams()
            self._train_stream, self._test_stream = _as_stream(train, "train"), _as_stream(test, "test")

    @property
    def train_stream(self) -> Stream:
        self._ensure_streams()
        assert self._train_stream is not None  # for mypy: set by _ensure_streams
        return self._train_stream

    @property
    def test_stream(self) -> Stream:
        self._ensure_streams()
        assert self._test_stream is not None  # for mypy: set by _ensure_streams
        return self._test_stream

    @property
    def num_experiences(self) -> int:
        """Number of experiences of the train stream (one ``fit`` each)."""
        return len(self.train_stream)

    @property
    def num_classes(self) -> int:
        """Number of distinct class ids the model sees over both streams."""
        return len(set(self.train_stream.classes) | set(self.test_stream.classes))

    @property
    def current_experience(self) -> int:
        """Index of the experience the running (or next) ``fit`` trains."""
        return self._next

    @property
    def completed_experiences(self) -> int:
        """Number of experiences whose training has finished."""
        return self._next

    # ------------------------------------------------------------------------- stream position
    def _begin_fit(self, trainer: L.Trainer) -> tuple[Experience | None, bool]:
        """Called by ContinualModule in ``setup("fit")``: pick the experience, set the loop limits.

        Returns the experience (None for a restore-only fit) and whether it starts now.
        """
        loop = trainer.fit_loop
        if self._restore_only:
            # nothing to train: the limits the checkpoint has reached (Lightning refuses a
            # checkpoint whose epoch is past max_epochs, so a step budget keeps max_epochs=-1)
            if self._target_epoch == -1 and self._target_step != -1:
                loop.max_epochs, loop.epoch_loop.max_steps = -1, self._target_step
            else:
                loop.max_epochs = max(self._target_epoch, trainer.current_epoch)
            return None, False
        starting = not self._active
        if starting:
            if self._next >= self.num_experiences:
                raise RuntimeError(
                    f"`trainer.fit`: the stream is finished: all {self.num_experiences} experiences of "
                    f"{type(self).__name__} have been trained, so there is no experience left to fit. "
                    "Build a new datamodule (or load an earlier checkpoint) to train again."
                )
            if self._epochs_per_experience is None:
                # the user's Trainer(max_epochs=..., max_steps=...) is the budget of ONE experience
                self._epochs_per_experience = loop.max_epochs if loop.max_epochs is not None else -1
                self._steps_per_experience = loop.max_steps
            epochs, steps = self._epochs_per_experience, self._steps_per_experience
            self._target_epoch = -1 if epochs == -1 else trainer.current_epoch + epochs
            self._target_step = -1 if steps in (-1, None) else trainer.global_step + int(steps)  # type: ignore[arg-type]
            self._active = True
        self._apply_limits(trainer)
        return self.train_stream[self._next], starting

    def _apply_limits(self, trainer: L.Trainer, restoring: bool = False) -> None:
        # Lightning compares these limits with *global* counters, which a second fit has
        # already reached: without this, every fit after the first trains zero epochs.
        trainer.fit_loop.max_epochs = self._target_epoch
        max_steps = self._target_step
        if restoring and self._target_epoch == -1 and max_steps != -1:
            # Lightning restores the loops of a run with a step limit as iteration-based: the
            # checkpoint's finished epoch would go on with a new iterator instead of the next
            # epoch starting. The limit is held back while the loops restore, and set again
            # when training starts (release_step_limit, from ContinualModule.on_train_start).
            max_steps, self._step_limit_held = -1, True
        trainer.fit_loop.epoch_loop.max_steps = max_steps

    def _release_step_limit(self, trainer: L.Trainer) -> None:
        """Set the step limit held back while a checkpoint's loops were restored."""
        if self._step_limit_held:
            trainer.fit_loop.epoch_loop.max_steps = self._target_step
            self._step_limit_held = False

    def _end_experience(self) -> None:
        self._next += 1
        self._active = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "next": self._next,
            "active": self._active,
            "target_epoch": self._target_epoch,
            "target_step": self._target_step,
            "epochs_per_experience": self._epochs_per_experience,
            "steps_per_experience": self._steps_per_experience,
            "seed": self.seed,
            # the training order's seed actually used (shuffle_seed, else seed_everything's)
            "shuffle_seed": self._sampler_seed(),
            "balance": self.balance,
            "num_experiences": self.num_experiences,
            "train_classes": [list(e.classes_in_this_experience) for e in self.train_stream],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        expected = {
            "num_experiences": self.num_experiences,
            "train_classes": [list(e.classes_in_this_experience) for e in self.train_stream],
        }
        for key, value in expected.items():
            if key in state_dict and state_dict[key] != value:
                raise ValueError(
                    f"The checkpoint is from another stream: its `{key}` is {state_dict[key]!r}, "
                    f"this {type(self).__name__} has {value!r}."
                )
        self._next = int(state_dict.get("next", 0))
        self._active = bool(state_dict.get("active", False))
        self._target_epoch = int(state_dict.get("target_epoch", -1))
        self._target_step = int(state_dict.get("target_step", -1))
        self._epochs_per_experience = state_dict.get("epochs_per_experience")
        self._steps_per_experience = state_dict.get("steps_per_experience")
        trainer = self.trainer
        if trainer is not None and self._active:
            self._apply_limits(trainer, restoring=True)

    # ------------------------------------------------------------------------------ loaders
    def _sampler_seed(self) -> int:
        if self.shuffle_seed is not None:
            return self.shuffle_seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Any, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_fn_of(dataset),
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        experience = self.train_stream[min(self._next, self.num_experiences - 1)]
        dataset: Dataset = experience.dataset
        callbacks = continual_callbacks(self.trainer)
        for callback in callbacks:
            dataset = callback.train_dataset(self, experience, dataset)
        dataset = in_group(dataset, "train")
        size = len(dataset)  # type: ignore[arg-type]
        seed = self._sampler_seed()
        # recorded with the hyperparameters, so a checkpoint's datamodule_hyper_parameters hold it
        self.hparams["shuffle_seed"] = seed
        world, rank = (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)
        sampler: Sampler[int]
        if self.balance is None:
            # under DDP each rank reads its share of the one seeded order: W processes take the
            # steps of one process with a W-times batch, on the same samples
            sampler = shard(SeededRandomSampler(size, seed, experience.index), world, rank)
        else:
            groups = group_labels(dataset, self.balance)
            sampler = BalancedSampler(groups, seed, experience.index, num_replicas=world, rank=rank)
        main = self._loader(dataset, self.batch_size, sampler, self.drop_last)
        extras: dict[str, DataLoader] = {}
        for callback in callbacks:
            for name, (joint, batch_size) in callback.joint_datasets(self, experience).items():
                if name == "current" or name in extras:
                    raise ValueError(f"{type(callback).__name__}.joint_datasets: the name {name!r} is already taken.")
                # as many batches per rank as the current loader, so it sets the epoch length
                length = len(main) * batch_size * world
                joint = in_group(joint, "train")
                extra = SeededRandomSampler(len(joint), seed, experience.index, length=length)  # type: ignore[arg-type]
                extras[name] = self._loader(joint, batch_size, shard(extra, world, rank))
        self._joint_keys = tuple(extras)
        if not extras:
            return main
        return CombinedLoader({"current": main, **extras}, mode="max_size_cycle")

    def test_dataloader(self) -> list[DataLoader]:
        trainer = self.trainer
        loaders = []
        for experience in self.test_stream:
            dataset = in_group(experience.dataset, "eval")
            sampler: Any = SequentialSampler(dataset)  # type: ignore[arg-type]
            if trainer is not None and trainer.world_size > 1:
                # the default DistributedSampler pads with duplicates: every sample must count once
                sampler = UnrepeatedDistributedSampler(
                    dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
                )
            loaders.append(self._loader(dataset, self.eval_batch_size, sampler))
        return loaders


def _as_stream(experiences: Sequence[Experience], name: str) -> Stream:
    if isinstance(experiences, Stream):
        return experiences
    if not isinstance(experiences, Sequence) or not all(isinstance(e, Experience) for e in experiences):
        raise TypeError(f"`{name}_stream`: expected a sequence of Experience, got {type(experiences).__name__}.")
    if len(experiences) == 0:
        raise ValueError(f"`{name}_stream`: expected at least one experience, got none.")
    return Stream(experiences, name)


def shard(sampler: Sampler[int], world: int, rank: int) -> Sampler[int]:
    """``sampler`` itself in one process; this rank's :class:`ShardedOrder` of it under DDP."""
    return sampler if world == 1 else ShardedOrder(sampler, world, rank)
