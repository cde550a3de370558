"""Baselines: naive (no callback), Cumulative, FromScratch, JointTraining."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import JointTraining, SplitDigits
from lightning_cl.callbacks import Cumulative, FromScratch
from lightning_cl.models import MLP, Classifier
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def digits_run(callbacks: list[Any], datamodule: Any = None, epochs: int = 4) -> Any:
    torch.manual_seed(0)
    dm = datamodule or SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=32)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(64,)), lr=0.1))
    return fit_stream(quiet_trainer(max_epochs=epochs, callbacks=callbacks), model, dm)


@pytest.fixture(scope="module")
def naive() -> Any:
    return digits_run([])


def test_naive_forgets_in_class_incremental_digits(naive: Any) -> None:
    R = naive.accuracy_matrix
    assert float(R.diagonal().min()) > 0.9
    assert naive.average_accuracy < 0.35  # only the last experience survives
    assert naive.forgetting > 0.8


def test_cumulative_trains_on_all_data_so_far_and_beats_naive(naive: Any) -> None:
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)))
    callback = Cumulative()
    sizes = [len(callback.train_dataset(dm, e, e.dataset)) for e in dm.train_stream]
    expected = torch.tensor([len(e) for e in dm.train_stream]).cumsum(0).tolist()
    assert sizes == expected
    result = digits_run([Cumulative()], epochs=10)
    assert result.average_accuracy > 0.85
    assert result.average_accuracy > naive.average_accuracy + 0.5
    assert result.forgetting < 0.1


def test_from_scratch_restarts_every_experience() -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(3)
    user = TinyClassifier(in_features=8, num_classes=6)
    initial = {k: v.clone() for k, v in user.state_dict().items()}
    starts: list[dict[str, torch.Tensor]] = []

    class Spy(FromScratch):
        def on_experience_start(self, trainer: Any, pl_module: Any, experience: Any) -> None:
            super().on_experience_start(trainer, pl_module, experience)
            starts.append({k: v.clone() for k, v in pl_module.module.state_dict().items()})

    result = fit_stream(quiet_trainer(max_epochs=2, callbacks=[Spy()]), ContinualModule(user), dm)
    for weights in starts:
        for k, v in initial.items():
            torch.testing.assert_close(weights[k], v)
    # from scratch every time: nothing of an earlier experience is kept
    assert float(result.accuracy_matrix[2, :2].max()) < 0.2


def test_from_scratch_state_round_trip() -> None:
    callback = FromScratch()
    assert callback.state_dict() == {}
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    callback.on_experience_start(None, model, None)  # type: ignore[arg-type]
    state = callback.state_dict()
    restored = FromScratch()
    restored.load_state_dict(state)
    assert restored.state_dict().keys() == state.keys()
    for k, v in state["initial"].items():
        torch.testing.assert_close(restored.state_dict()["initial"][k], v)


def test_from_scratch_redraws_a_grown_layer() -> None:
    callback = FromScratch()
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    callback.on_experience_start(None, model, None)  # type: ignore[arg-type]
    model.module.net[3] = torch.nn.Linear(32, 8)  # a head that grew from 6 to 8 outputs
    callback.on_experience_start(None, model, None)  # type: ignore[arg-type]
    torch.testing.assert_close(model.module.net[1].weight, callback.state_dict()["initial"]["net.1.weight"])
    assert model.module.net[3].weight.shape == (8, 32)


def test_joint_training_is_the_upper_bound(naive: Any) -> None:
    joint = JointTraining(SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=32))
    result = digits_run([], datamodule=joint, epochs=10)
    assert result.accuracy_matrix.shape == (1, 5)
    assert result.average_accuracy > 0.9
    assert result.average_accuracy > naive.average_accuracy + 0.5
