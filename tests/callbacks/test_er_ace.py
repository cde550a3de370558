"""ER-ACE: the asymmetric cross-entropy, the replaced loss, the memory updated before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from lightning_cl import ContinualModule
from lightning_cl.callbacks import ERACE
from lightning_cl.callbacks.er_ace import asymmetric_cross_entropy
from lightning_cl.core.callback import TrainingStep
from lightning_cl.models import MLP, Classifier
from tests.callbacks.replay_helpers import checkpoint_state, digits, digits_run, naive_accuracy
from tests.conftest import quiet_trainer


def test_asymmetric_cross_entropy_ignores_absent_classes() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.0, 1.0, -1.0, 2.0]])
    y = torch.tensor([1, 3])
    # only columns 1 and 3 compete
    expected = (
        -(torch.log_softmax(torch.tensor([2.0, 0.5]), 0)[0] + torch.log_softmax(torch.tensor([1.0, 2.0]), 0)[1]) / 2
    )
    assert asymmetric_cross_entropy(logits, y).item() == pytest.approx(expected.item())
    # with every class present it is the ordinary cross-entropy
    assert asymmetric_cross_entropy(
        logits, torch.tensor([0, 1, 2, 3]).repeat(1)[:2].new_tensor([0, 2])
    ).item() == pytest.approx(F.cross_entropy(logits[:, [0, 2]], torch.tensor([0, 1])).item())


def test_task_loss_is_the_mean_of_ace_and_memory_ce() -> None:
    erace = ERACE(memory_size=10)
    user = Classifier(MLP(64, 10, hidden_sizes=(8,)), lr=0.1)
    module = ContinualModule(user)
    dm = digits()
    x = torch.randn(4, 1, 8, 8)
    batch = [x, torch.tensor([2, 3, 2, 3])]
    memory = [torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])]
    step = TrainingStep(module, batch, {erace._key: memory}, None, torch.tensor(0.0), 0)
    expected = (asymmetric_cross_entropy(user(x), batch[1]) + F.cross_entropy(user(memory[0]), memory[1])) / 2
    assert erace.task_loss(step).item() == pytest.approx(expected.item())  # type: ignore[union-attr]
    assert erace.task_loss(TrainingStep(module, batch, {}, None, torch.tensor(0.0), 0)) is None
    assert dm.num_classes == 10


def test_current_samples_enter_the_memory_when_the_experience_starts() -> None:
    erace = ERACE(memory_size=20)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(8,)), lr=0.1))
    trainer = quiet_trainer(callbacks=[erace], limit_train_batches=1)
    dm = digits()
    trainer.fit(model, datamodule=dm)
    assert set(erace.buffer.slots.targets.tolist()) == {0, 1}
    trainer.fit(model, datamodule=dm)
    assert torch.bincount(erace.buffer.slots.targets).tolist() == [5, 5, 5, 5]


def test_er_ace_beats_naive() -> None:
    result = digits_run([ERACE(memory_size=100)])
    assert result.average_accuracy > naive_accuracy() + 0.35


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    erace = ERACE(memory_size=20)
    state = checkpoint_state(erace, tmp_path)
    restored = ERACE(memory_size=20)
    restored.load_state_dict(state)
    assert restored.buffer.fingerprint() == erace.buffer.fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_size": 0}, "memory_size"),
        ({"memory_batch_size": -1}, "memory_batch_size"),
        ({"storage": "x"}, "storage"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ERACE(**kwargs)
