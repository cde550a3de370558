"""The stream loaders: balanced training loaders, transform groups per loader, datasets' own collate_fn."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualCallback, ContinualModule
from lightning_cl.benchmarks.cifar import SplitCIFAR10
from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.joint import JointTraining
from lightning_cl.benchmarks.with_validation_stream import with_validation_stream
from lightning_cl.core.callback import JointData
from lightning_cl.core.data import InMemoryDataset, collate
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience
from tests.benchmarks.test_cifar import fake_cifar, root  # noqa: F401  (fixtures)
from tests.conftest import TinyClassifier, quiet_trainer

N = 48  # per experience: classes 0, 1, 2 (then 3, 4, 5) in proportions 4 : 1 : 1


def add_100(x: Tensor) -> Tensor:
    return x + 100


def ones_collate(batch: Any) -> list[Tensor]:
    """A user's collate: zeroes the inputs and adds one, so its use shows in the batch."""
    x, *rest = collate(batch)
    return [torch.ones_like(x), *rest]


def data(collate_fn: Any = None, task_labels: bool = False) -> InMemoryDataset:
    """x = [row, ...], y imbalanced (4 : 1 : 1 per experience), attribute site = row % 4 (uneven by class)."""
    per_exp = torch.tensor([0] * 32 + [1] * 8 + [2] * 8)
    y = torch.cat([per_exp, per_exp + 3])
    x = torch.cat([torch.arange(2 * N, dtype=torch.float32)[:, None], torch.zeros(2 * N, 7)], 1)
    return InMemoryDataset(
        x,
        y,
        attributes={"site": torch.arange(2 * N) % 4, "sample_id": torch.arange(2 * N)},
        transform_groups={"train": add_100},
        collate_fn=collate_fn,
    )


def stream(
    balance: str | None = None, batch_size: int = 6, dataset: InMemoryDataset | None = None, collate_fn: Any = None
) -> StreamDataModule:
    dataset = dataset or data(collate_fn)
    generated = class_incremental(dataset, dataset, num_experiences=2, class_order=range(6))
    return StreamDataModule(
        generated.train_stream, generated.test_stream, batch_size=batch_size, eval_batch_size=16, balance=balance
    )


def batches(loader: Any) -> list[list[Tensor]]:
    return list(loader)


# ------------------------------------------------------------------------------ balance
@pytest.mark.parametrize(("balance", "groups"), [("class", 3), ("site", 4)])
def test_balanced_loader_draws_every_group_equally(balance: str, groups: int) -> None:
    dm = stream(balance=balance, batch_size=groups * 2)
    experience = dm.train_stream[0]
    labels = experience.dataset.targets if balance == "class" else experience.dataset.attributes[balance]
    row_label = dict(zip((experience.dataset.indices).tolist(), labels.tolist()))
    loader = dm.train_dataloader()
    for x, _ in batches(loader):
        counts = Counter(row_label[int(r) - 100] for r in x[:, 0])
        if len(x) == groups * 2:
            assert sorted(counts.values()) == [2] * groups
    assert len(loader) == -(-N // (groups * 2))  # as many batches as unbalanced


def test_unbalanced_loader_follows_the_data() -> None:
    dm = stream(batch_size=48)
    (_, y), *_ = batches(dm.train_dataloader())
    assert torch.bincount(y).tolist() == [32, 8, 8]


def test_task_balance_over_a_joint_stream() -> None:
    dataset = data()
    dm = JointTraining(class_incremental(dataset, dataset, num_experiences=2, class_order=range(6), task_labels=True))
    dm.balance = "task"
    dm.batch_size = 8
    for batch in batches(dm.train_dataloader()):
        assert torch.bincount(batch[2], minlength=2).tolist() == [4, 4]


def test_balance_is_a_setting_of_derived_streams_and_is_recorded() -> None:
    dm = stream(balance="class")
    assert dm.state_dict()["balance"] == "class"
    assert with_validation_stream(dm, validation_size=0.25).balance == "class"
    assert JointTraining(dm).balance == "class"
    dm.balance = None
    assert dm.state_dict()["balance"] is None


@pytest.mark.parametrize(
    ("balance", "match"),
    [
        ("colour", r"`balance`: expected 'task', 'class' or the name of an attribute of the InMemoryDataset"),
        ("task", "`balance`: 'task' balances task labels, but the InMemoryDataset has none"),
    ],
)
def test_unknown_balance_is_an_error_when_the_loader_is_built(balance: str, match: str) -> None:
    dm = stream(balance=balance)
    with pytest.raises(ValueError, match=match):
        dm.train_dataloader()


@pytest.mark.parametrize("balance", [3, "", ["class"]])
def test_balance_must_be_a_name(balance: Any) -> None:
    with pytest.raises(ValueError, match="`balance`: expected None, 'task', 'class' or the name"):
        stream(balance=balance)
    dm = stream()
    with pytest.raises(ValueError, match="`balance`"):
        dm.balance = balance


class Recorder(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=6)
        self.rows: list[list[int]] = []
        self.labels: list[list[int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.rows.append(batch[0][:, 0].long().tolist())
        self.labels.append(batch[1].tolist())
        return super().training_step(batch, batch_idx)


def test_balanced_training_with_a_trainer_changes_order_every_epoch() -> None:
    user = Recorder()
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(ContinualModule(user), datamodule=stream(balance="class"))
    per_epoch = len(user.rows) // 2
    assert per_epoch == N // 6
    assert all(sorted(Counter(labels).values()) == [2, 2, 2] for labels in user.labels)
    assert user.rows[:per_epoch] != user.rows[per_epoch:]  # Lightning's set_epoch reached the sampler
    again = Recorder()
    quiet_trainer(max_epochs=2).fit(ContinualModule(again), datamodule=stream(balance="class"))
    assert again.rows == user.rows  # a pure function of (seed, experience, epoch)


# ------------------------------------------------------------------------ transform groups
def test_training_data_is_in_its_train_group_and_test_data_in_eval() -> None:
    dm = stream()
    assert dm.train_stream[0].dataset.group == "train"
    x, _ = batches(dm.train_dataloader())[0]
    assert bool((x[:, 0] >= 100).all())  # the train group's transform
    for loader in dm.test_dataloader():
        for x, _ in loader:
            assert bool((x[:, 0] < 100).all())  # no train transform at test time


def test_validation_parts_are_in_the_eval_group() -> None:
    dm = with_validation_stream(stream(), validation_size=0.25)
    valid = dm.valid_stream[0].dataset
    assert valid.group == "eval" and dm.train_stream[0].dataset.group == "train"
    assert all(float(valid[i][0][0]) < 100 for i in range(len(valid)))


class Memory(ContinualCallback):
    """Replay alongside, from a dataset in its eval group with its own collate_fn."""

    def joint_datasets(self, datamodule: Any, experience: Experience) -> dict[str, JointData]:
        memory = data(collate_fn=ones_collate).subset([0, 1, 2]).with_group("eval")
        return {"memory": JointData(memory, 2)}


def test_joint_datasets_are_trained_in_their_train_group_with_their_collate() -> None:
    dm = stream()
    dm.trainer = quiet_trainer(callbacks=[Memory()])
    combined = iter(dm.train_dataloader())
    batch, *_ = next(combined)
    x_current, _ = batch["current"]
    x_memory, _ = batch["memory"]
    assert bool((x_current[:, 0] >= 100).all())
    assert torch.equal(x_memory, torch.ones_like(x_memory))  # its own collate_fn


def test_cifar_train_data_in_eval_group_gets_the_eval_transform(root: Path) -> None:  # noqa: F811
    plain = SplitCIFAR10(root, download=False)
    dm = SplitCIFAR10(root, download=False, train_transform=add_100, eval_transform=torch.neg)
    train, test = dm.train_stream[0].dataset, dm.test_stream[0].dataset
    assert train.group == "train" and test.group == "eval"
    base_train, base_test = plain.train_stream[0].dataset, plain.test_stream[0].dataset
    torch.testing.assert_close(train[3][0], base_train[3][0] + 100)
    torch.testing.assert_close(train.with_group("eval")[3][0], -base_train[3][0])
    torch.testing.assert_close(test[3][0], -base_test[3][0])
    torch.testing.assert_close(test.with_group("train")[3][0], base_test[3][0] + 100)


# ------------------------------------------------------------------------------ collate_fn
def test_loaders_use_the_datasets_collate_fn() -> None:
    dm = stream(collate_fn=ones_collate)
    x, _ = batches(dm.train_dataloader())[0]
    assert torch.equal(x, torch.ones_like(x))
    x, _ = next(iter(dm.test_dataloader()[1]))
    assert torch.equal(x, torch.ones_like(x))


def test_a_fit_trains_on_batches_from_the_datasets_collate_fn() -> None:
    user = Recorder()
    quiet_trainer(max_epochs=1).fit(ContinualModule(user), datamodule=stream(collate_fn=ones_collate))
    assert user.rows and all(row == 1 for rows in user.rows for row in rows)


def test_returned_attributes_reach_the_training_step() -> None:
    dm = stream(dataset=data().with_return_attributes(["sample_id"]))
    x, _, sample_id = batches(dm.train_dataloader())[0]
    assert (x[:, 0] - 100).long().tolist() == sample_id.tolist()
