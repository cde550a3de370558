"""Replay: the memory joins the data (concat) or every batch (joint); the user's step sees plain batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import online
from lightning_cl.buffers import ClassBalancedBuffer, ReservoirBuffer
from lightning_cl.callbacks import DER, ERACE, EWC, Replay
from lightning_cl.models import MLP, Classifier
from tests.callbacks.replay_helpers import checkpoint_state, digits, digits_run, naive_accuracy
from tests.conftest import quiet_trainer


class Recorder(Classifier):
    """Records the batches its training_step receives."""

    def __init__(self) -> None:
        super().__init__(MLP(64, 10, hidden_sizes=(16,)), lr=0.1)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        self.seen.append((len(x), sorted(set(y.tolist()))))
        return F.cross_entropy(self(x), y)


def test_joint_mode_appends_a_memory_batch_to_every_batch() -> None:
    user = Recorder()
    dm = digits(batch_size=16)
    replay = Replay(memory_size=40, memory_batch_size=8)
    trainer = quiet_trainer(max_epochs=1, callbacks=[replay])
    model = ContinualModule(user)
    trainer.fit(model, datamodule=dm)
    assert all(size <= 16 for size, _ in user.seen)  # no memory during the first experience
    assert len(replay.buffer) == 40
    user.seen.clear()
    trainer.fit(model, datamodule=dm)
    full = [(size, classes) for size, classes in user.seen if size == 16 + 8]
    assert len(full) == len(user.seen) - 1  # the last current batch may be short
    # old classes (0, 1) reach the user's step alongside the new ones (2, 3)
    assert set().union(*(set(c) for _, c in user.seen)) == {0, 1, 2, 3}
    steps_per_experience = -(-len(dm.train_stream[1]) // 16)
    assert len(user.seen) == steps_per_experience  # the current data sets the epoch length


def test_concat_mode_adds_the_memory_to_the_training_set() -> None:
    dm = digits()
    replay = Replay(memory_size=50, batch_mode="concat")
    experience = dm.train_stream[0]
    assert replay.train_dataset(dm, experience, experience.dataset) is experience.dataset
    from lightning_cl.buffers import Candidates

    replay.buffer.update(Candidates.of_experience(experience))
    grown = replay.train_dataset(dm, dm.train_stream[1], dm.train_stream[1].dataset)
    assert len(grown) == len(dm.train_stream[1]) + 50
    assert replay.joint_datasets(dm, dm.train_stream[1]) == {}


@pytest.mark.parametrize(
    ("replay", "epochs"),
    [
        (lambda: Replay(memory_size=100), 2),
        # concat: 100 old samples among ~290 new ones per epoch, so it needs a few epochs more
        (lambda: Replay(memory_size=100, batch_mode="concat"), 5),
        (lambda: Replay(memory_size=100, storage="class_balanced", selection="herding"), 2),
        (lambda: Replay(memory_size=100, storage="reservoir"), 2),
    ],
    ids=["joint", "concat", "herding", "reservoir"],
)
def test_replay_beats_naive_on_class_incremental_digits(replay: Any, epochs: int) -> None:
    result = digits_run([replay()], epochs=epochs)
    naive = naive_accuracy(epochs)
    assert naive < 0.3
    assert result.average_accuracy > naive + 0.35, (result.average_accuracy, naive)


def test_replay_combines_with_ewc() -> None:
    result = digits_run([Replay(memory_size=100), EWC(ewc_lambda=10)])
    assert result.average_accuracy > naive_accuracy() + 0.35


def test_checkpoint_holds_the_buffer_as_indices(tmp_path: Path) -> None:
    replay = Replay(memory_size=30, storage="class_balanced")
    state = checkpoint_state(replay, tmp_path)
    assert state["buffer"]["position"].dtype == torch.long and len(state["buffer"]["position"]) == 30
    restored = Replay(memory_size=30, storage="class_balanced")
    restored.load_state_dict(state)
    assert restored.buffer.fingerprint() == replay.buffer.fingerprint()
    assert torch.equal(restored.buffer.slots.targets, replay.buffer.slots.targets)


def test_same_seed_same_buffer_and_same_result() -> None:
    a, b = Replay(memory_size=60, seed=5), Replay(memory_size=60, seed=5)
    ra, rb = digits_run([a], epochs=1), digits_run([b], epochs=1)
    assert a.buffer.fingerprint() == b.buffer.fingerprint()
    assert torch.equal(ra.accuracy_matrix, rb.accuracy_matrix)


def test_a_buffer_instance_is_used_as_given() -> None:
    buffer = ClassBalancedBuffer(20, total_num_classes=10)
    replay = Replay(storage=buffer)
    assert replay.buffer is buffer and replay.memory_size == 20


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Replay(memory_size=0), "memory_size"),
        (lambda: Replay(memory_size=-3), "memory_size"),
        (lambda: Replay(storage="fifo"), "storage"),
        (lambda: Replay(selection="best"), "selection"),
        (lambda: Replay(storage="reservoir", selection="herding"), "selection"),
        (lambda: Replay(batch_mode="mix"), "batch_mode"),
        (lambda: Replay(memory_batch_size=0), "memory_batch_size"),
    ],
)
def test_bad_arguments_are_named(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_two_replays_keep_separate_state() -> None:
    a, b = Replay(memory_size=10), Replay(memory_size=20, storage=ReservoirBuffer(20))
    assert a.state_key != b.state_key
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1))
    fit_stream(quiet_trainer(callbacks=[a, b], limit_train_batches=2), model, digits())
    assert (len(a.buffer), len(b.buffer)) == (10, 20)


class MemoryProbe(L.Callback):
    """Records the buffer size when each mini-experience starts and the batch sizes trained."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.sizes: list[int] = []

    def on_mini_experience_start(self, trainer: L.Trainer, pl_module: Any, mini: Any) -> None:
        self.sizes.append(len(self.method.buffer))


@pytest.mark.parametrize("access", [True, False])
@pytest.mark.parametrize(
    "make",
    [lambda: Replay(memory_size=30, memory_batch_size=5), lambda: DER(memory_size=30), lambda: ERACE(memory_size=30)],
    ids=["replay", "der", "erace"],
)
def test_online_streams_update_the_memory_every_mini_experience(make: Any, access: bool) -> None:
    method = make()
    probe = MemoryProbe(method)
    dm = online(digits(), experience_size=20, batch_size=10, access_task_boundaries=access)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1))
    trainer = quiet_trainer(callbacks=[method, probe])
    trainer.fit(model, datamodule=dm)
    trainer.fit(model, datamodule=dm)
    # ER-ACE offers a mini-experience when it starts, the others when it ends
    expected = [20, 30, 30] if isinstance(method, ERACE) else [0, 20, 30]
    assert probe.sizes[:3] == expected
    assert len(method.buffer) == 30
    assert set(method.buffer.slots.experience.tolist()) <= {0, 1}
