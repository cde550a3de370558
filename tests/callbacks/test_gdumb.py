"""GDumb: a class-balanced memory, retrained on from scratch, alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_cl import ContinualModule
from lightning_cl.callbacks import GDumb
from lightning_cl.models import MLP, Classifier
from tests.callbacks.replay_helpers import checkpoint_state, digits, digits_run, naive_accuracy
from tests.conftest import quiet_trainer


def test_trains_on_the_memory_only_from_the_initial_weights() -> None:
    gdumb = GDumb(memory_size=60)
    user = Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1)
    initial = {k: v.clone() for k, v in user.state_dict().items()}
    model = ContinualModule(user)
    trainer = quiet_trainer(callbacks=[gdumb], limit_train_batches=2)
    dm = digits()
    trainer.fit(model, datamodule=dm)
    trained = {k: v.clone() for k, v in user.state_dict().items()}
    assert not torch.equal(trained["backbone.classifier.weight"], initial["backbone.classifier.weight"])
    gdumb.on_experience_start(trainer, model, dm.train_stream[1])  # what the next fit does first
    assert all(torch.equal(user.state_dict()[k], v) for k, v in initial.items())
    assert torch.bincount(gdumb.buffer.slots.targets).tolist() == [15, 15, 15, 15]
    assert len(gdumb.train_dataset(dm, dm.train_stream[1], dm.train_stream[1].dataset)) == 60


def test_gdumb_beats_naive_with_enough_epochs() -> None:
    result = digits_run([GDumb(memory_size=400)], epochs=8)
    naive = naive_accuracy(8)
    assert result.average_accuracy > naive + 0.5, (result.average_accuracy, naive)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    gdumb = GDumb(memory_size=30)
    state = checkpoint_state(gdumb, tmp_path)
    restored = GDumb(memory_size=30)
    restored.load_state_dict(state)
    assert restored.buffer.fingerprint() == gdumb.buffer.fingerprint()
    assert set(state["reset"]["initial"]) == set(
        ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(16,)))).state_dict()
    )


def test_memory_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_size"):
        GDumb(memory_size=0)
