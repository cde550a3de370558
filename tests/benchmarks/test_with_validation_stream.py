"""with_validation_stream: a validation part per train experience, validated during its own fit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from lightning_cl import ContinualModule
from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.online import online
from lightning_cl.benchmarks.task_incremental import task_incremental
from lightning_cl.benchmarks.with_validation_stream import ValidationStreamDataModule, with_validation_stream
from lightning_cl.core.data import InMemoryDataset, collate
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer

CLASS_SIZES = (9, 14, 21, 6)  # per experience of two classes: (9, 14) and (21, 6)


class GenericDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def stream(kind: str = "tensor", task_labels: bool = False) -> Any:
    """Two experiences (classes 0-1, then 2-3); row i of x is ``[i, y_i]``."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(CLASS_SIZES)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    x = torch.stack([torch.arange(len(y)), y], dim=1).float()
    data = InMemoryDataset(x, y) if kind == "tensor" else GenericDataset(x, y)
    make = task_incremental if task_labels else class_incremental
    return make(data, data, num_experiences=2, class_order=[0, 1, 2, 3], batch_size=8)


def rows(dataset: Dataset) -> list[int]:
    return collate([dataset[i] for i in range(len(dataset))])[0][:, 0].long().tolist()  # type: ignore[arg-type]


def class_counts(dataset: Dataset) -> list[int]:
    y = collate([dataset[i] for i in range(len(dataset))])[1]  # type: ignore[arg-type]
    return torch.bincount(y, minlength=4).tolist()


@pytest.mark.parametrize("kind", ["tensor", "generic"])
@pytest.mark.parametrize("mode", ["class_balanced", "random"])
@pytest.mark.parametrize("size", [0.3, 5])
def test_train_and_validation_parts_partition_each_experience(kind: str, mode: str, size: float) -> None:
    original = stream(kind)
    dm = with_validation_stream(original, validation_size=size, mode=mode)  # type: ignore[arg-type]

    assert dm.test_stream is original.test_stream
    for before, train, valid in zip(original.train_stream, dm.train_stream, dm.valid_stream):
        kept, held = rows(train.dataset), rows(valid.dataset)
        assert not set(kept) & set(held)
        assert sorted(kept + held) == sorted(rows(before.dataset))
        expected = int(size * len(before)) if isinstance(size, float) else size
        if mode == "random":
            assert len(held) == expected
        assert valid.index == train.index == before.index


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0.3, [[2, 4, 0, 0], [0, 0, 6, 1]]),  # floor(0.3 * n_c) per class
        (5, [[2, 3, 0, 0], [0, 0, 4, 1]]),  # 5 in proportion to (9, 14) and (21, 6): largest remainder
    ],
)
def test_class_balanced_validation_takes_the_same_share_of_every_class(size: float, expected: list[list[int]]) -> None:
    dm = with_validation_stream(stream(), validation_size=size)
    assert [class_counts(e.dataset) for e in dm.valid_stream] == expected


def test_the_split_is_seeded() -> None:
    def held(seed: int) -> list[list[int]]:
        dm = with_validation_stream(stream(), validation_size=0.3, seed=seed)
        return [rows(e.dataset) for e in dm.valid_stream]

    assert held(1) == held(1)
    assert held(1) != held(2)


def test_fast_path_and_task_labels_are_kept() -> None:
    dm = with_validation_stream(stream(task_labels=True), validation_size=0.3)
    for train, valid in zip(dm.train_stream, dm.valid_stream):
        assert isinstance(train.dataset, InMemoryDataset) and isinstance(valid.dataset, InMemoryDataset)
        assert train.task_label == valid.task_label == train.index
        assert set(collate([valid.dataset[0]])[2].tolist()) == {valid.index}


def test_task_labels_survive_the_per_sample_path() -> None:
    dm = with_validation_stream(stream("generic", task_labels=True), validation_size=0.3, mode="random")
    *_, t = dm.valid_stream[1].dataset[0]
    assert int(t) == 1


class Validating(TinyClassifier):
    """Logs val_loss and records the class ids its validation_step sees, per fit."""

    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=6)
        self.seen: list[int] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen += batch[1].tolist()
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


def test_lightning_validates_the_current_experience_and_early_stopping_runs() -> None:
    dm = with_validation_stream(make_tensor_stream(num_experiences=3), validation_size=0.25)
    torch.manual_seed(0)
    user = Validating()
    model = ContinualModule(user)
    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05)
    trainer = quiet_trainer(max_epochs=40, callbacks=[stopper], num_sanity_val_steps=0)
    epochs = []
    for k in range(3):
        user.seen = []
        start = trainer.current_epoch
        trainer.fit(model, datamodule=dm)
        epochs.append(trainer.current_epoch - start)
        valid = dm.valid_stream[k]
        assert (
            set(user.seen)
            == set(valid.classes_in_this_experience)
            == set(dm.train_stream[k].classes_in_this_experience)
        )
        assert len(user.seen) == len(valid) * epochs[-1]  # the whole validation part, every epoch
        assert "val_loss" in trainer.callback_metrics
    assert all(1 <= e < 40 for e in epochs)  # stopped early in every experience, reset in between

    user.seen = []
    trainer.validate(model, datamodule=dm, verbose=False)  # between fits: the last trained experience
    assert set(user.seen) == {4, 5}


def test_online_keeps_the_validation_stream() -> None:
    dm = online(with_validation_stream(make_tensor_stream(num_experiences=2), validation_size=0.25), 10)
    user = Validating()
    trainer = quiet_trainer(num_sanity_val_steps=0)
    trainer.fit(ContinualModule(user), datamodule=dm)
    assert dm.valid_stream is dm.stream.valid_stream  # type: ignore[attr-defined]
    assert set(user.seen) == {0, 1, 2} and len(user.seen) == 15  # 3 classes x floor(0.25 x 20)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"validation_size": 0.0}, ValueError, r"`validation_size`: expected a number in \(0, 1\), got 0.0"),
        ({"validation_size": 1.0}, ValueError, r"`validation_size`: expected a number in \(0, 1\), got 1.0"),
        ({"validation_size": 0}, ValueError, "`validation_size`: expected a number of samples >= 1, got 0"),
        ({"validation_size": True}, TypeError, "`validation_size`: expected a fraction in"),
        ({"validation_size": "10%"}, TypeError, "`validation_size`: expected a fraction in"),
        ({"validation_size": 0.1, "mode": "stratified"}, ValueError, "`mode`: expected one of"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        with_validation_stream(stream(), **kwargs)


@pytest.mark.parametrize(
    ("size", "mode", "match"),
    [
        (0.04, "random", "0.04 leaves no validation sample in experience 0 "),
        (0.05, "class_balanced", "0.05 leaves no validation sample in experience 0 "),
        (23, "random", "23 leaves no train sample in experience 0 "),
    ],
)
def test_sizes_that_empty_a_part_are_reported_when_the_streams_are_built(size: float, mode: str, match: str) -> None:
    dm = with_validation_stream(stream(), validation_size=size, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"`validation_size`: {match}"):
        dm.train_stream


def test_bad_datamodules() -> None:
    with pytest.raises(TypeError, match="`datamodule`: expected a StreamDataModule, got list"):
        ValidationStreamDataModule([], 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`datamodule`: OnlineStreamDataModule builds its own train loader"):
        with_validation_stream(online(stream(), 4), validation_size=0.1)


def test_checkpoint_round_trip(tmp_path: Any) -> None:
    dm = with_validation_stream(make_tensor_stream(num_experiences=3), validation_size=0.25, seed=3)
    trainer = quiet_trainer()
    trainer.fit(ContinualModule(TinyClassifier(in_features=8, num_classes=6)), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "exp0.ckpt")
    saved = torch.load(tmp_path / "exp0.ckpt", weights_only=True)["ValidationStreamDataModule"]
    assert saved["validation_split"] == {"validation_size": 0.25, "mode": "class_balanced", "seed": 3}

    again = with_validation_stream(make_tensor_stream(num_experiences=3), validation_size=0.25, seed=3)
    again.load_state_dict(saved)
    assert again.state_dict() == dm.state_dict() and again.validation_experience == 0
    with pytest.raises(ValueError, match="The checkpoint is from another validation split"):
        with_validation_stream(make_tensor_stream(num_experiences=3), validation_size=0.25, seed=4).load_state_dict(
            saved
        )


class WithTasks(Dataset):
    """Samples ``(x, y, t)`` of a dataset of no known kind: no ``subset``, no ``task_labels``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return torch.tensor([float(i)]), i % 2, 1


def test_datasets_of_any_kind_are_wrapped_with_their_task_labels() -> None:
    experience = Experience(0, WithTasks(10), (0, 1), task_label=1)
    dm = with_validation_stream(StreamDataModule([experience], [experience]), validation_size=0.4)
    x, y, t = collate([dm.valid_stream[0].dataset[i] for i in range(4)])
    assert torch.equal(y, x[:, 0].long() % 2) and t.tolist() == [1, 1, 1, 1]
    assert len(dm.train_stream[0]) == 6
