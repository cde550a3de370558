"""DER / DER++: stored logits, the loss terms, growth of the outputs, state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.buffers import Candidates
from lightning_cl.callbacks import DER
from lightning_cl.callbacks.der import logit_matching
from lightning_cl.core.callback import TrainingStep
from lightning_cl.models import MLP, Classifier, IncrementalClassifier
from tests.callbacks.replay_helpers import checkpoint_state, digits, digits_run, naive_accuracy
from tests.conftest import quiet_trainer


def test_logit_matching_is_the_mse_over_stored_entries() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    stored = torch.tensor([[0.0, 2.0, float("nan")], [1.0, -1.0, float("nan")]])
    # entries (0,0), (0,1), (1,0), (1,1): squared errors 1, 0, 1, 1
    assert logit_matching(logits, stored).item() == pytest.approx(0.75)


def test_stored_logits_are_the_models_at_the_end_of_the_experience() -> None:
    der = DER(memory_size=40)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1))
    trainer = quiet_trainer(callbacks=[der], limit_train_batches=3)
    dm = digits()
    trainer.fit(model, datamodule=dm)
    assert len(der.buffer) == 40 and der.buffer.extras["logits"].shape == (40, 10)
    data = der.buffer.dataset(dm.train_stream, with_slots=True)
    x, _, slots = data.__getitems__(list(range(40))).tensors
    with torch.no_grad():
        expected = model.module.eval()(x)
    assert torch.allclose(der.buffer.extras["logits"][slots], expected, atol=1e-6)


def test_loss_terms_are_alpha_mse_plus_beta_ce() -> None:
    der = DER(memory_size=8, alpha=0.3, beta=0.7)
    dm = digits()
    user = Classifier(MLP(64, 10, hidden_sizes=(16,)), lr=0.1)
    module = ContinualModule(user)
    candidates = Candidates.of_experience(dm.train_stream[0])
    stored = torch.randn(len(candidates), 10, generator=torch.Generator().manual_seed(0))
    der.buffer.update(candidates, extras={"logits": stored})
    memory = list(der.buffer.dataset(dm.train_stream, with_slots=True).__getitems__(list(range(8))).tensors)
    step = TrainingStep(module, memory[:2], {der._key: memory}, None, torch.tensor(0.0), 0)
    terms = der.loss_terms(step)
    out = user(memory[0])
    assert terms["der"].item() == pytest.approx(0.3 * F.mse_loss(out, der.buffer.extras["logits"][memory[2]]).item())
    assert terms["der_ce"].item() == pytest.approx(0.7 * F.cross_entropy(out, memory[1]).item())
    assert set(DER(memory_size=8, beta=0.0).loss_terms(step)) == set()  # not its key: nothing


# ~9 steps per epoch here: the logit terms need a few epochs to act (0.82 / 0.71 vs naive 0.19)
def test_der_plus_plus_beats_naive() -> None:
    result = digits_run([DER(memory_size=100, alpha=0.1, beta=0.5)], epochs=5)
    assert result.average_accuracy > naive_accuracy(5) + 0.45


def test_plain_der_beats_naive() -> None:
    result = digits_run([DER(memory_size=100, alpha=0.3, beta=0.0)], epochs=5)
    assert result.average_accuracy > naive_accuracy(5) + 0.35


class Growing(Classifier):
    def __init__(self) -> None:
        super().__init__(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), IncrementalClassifier(16, 2)), lr=0.1
        )


@pytest.mark.parametrize("evaluate_initial", [True, False])
def test_grown_or_masked_outputs_are_not_matched_for_older_logits(evaluate_initial: bool) -> None:
    # with the initial evaluation the head has grown to 10 masked outputs before training;
    # without it, it grows by 2 per experience: either way only trained units are stored
    der = DER(memory_size=30)
    trainer = quiet_trainer(callbacks=[der], limit_train_batches=2)
    fit_stream(trainer, ContinualModule(Growing()), digits(), evaluate_initial=evaluate_initial)
    logits = der.buffer.extras["logits"]
    assert logits.shape[1] == 10
    first = der.buffer.slots.experience == 0
    assert torch.isnan(logits[first][:, 2:]).all() and not torch.isnan(logits[first][:, :2]).any()
    assert not torch.isnan(logits[der.buffer.slots.experience == 4]).any()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    der = DER(memory_size=20)
    state = checkpoint_state(der, tmp_path)
    restored = DER(memory_size=20)
    restored.load_state_dict(state)
    assert restored.buffer.fingerprint() == der.buffer.fingerprint()
    assert torch.equal(restored.buffer.extras["logits"], der.buffer.extras["logits"])


class NoLogits(Classifier):
    def forward(self, x: torch.Tensor) -> Any:
        return {"out": super().forward(x)}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return F.cross_entropy(super().forward(batch[0]), batch[1])


def test_a_model_without_readable_logits_is_refused() -> None:
    model = ContinualModule(NoLogits(MLP(64, 10, hidden_sizes=(8,))))
    with pytest.raises(TypeError, match="DER"):
        quiet_trainer(callbacks=[DER(memory_size=10)]).fit(model, datamodule=digits())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_size": 0}, "memory_size"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": "x"}, "beta"),
        ({"memory_batch_size": 0}, "memory_batch_size"),
        ({"storage": "lifo"}, "storage"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        DER(**kwargs)
