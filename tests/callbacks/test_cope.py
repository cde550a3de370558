"""CoPE: the PPP loss (a hand-computed 2-D case and a literal transcription of its formula), the
prototype moving average, nearest-prototype scores, the training and evaluation hooks, forgetting
against naive on an online stream, checkpoints and bad input."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.benchmarks import SplitDigits, online
from lightning_cl.buffers.base import Candidates
from lightning_cl.callbacks.cope import CoPE, ppp_loss, prototype_scores, update_prototypes
from lightning_cl.core.callback import TrainingStep
from lightning_cl.models import MLP, Classifier
from tests.callbacks.memory_method_helpers import checkpointing_trainer
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def ppp_by_formula(x: Tensor, y: Tensor, prototypes: Tensor, T: float) -> Tensor:
    """The PPP loss as the paper and Avalanche's ``PPPloss`` write it: exponentials, one class at a time."""
    loss = x.new_zeros(())
    for c in torch.unique(y).tolist():
        same, other = x[y == c], x[y != c]
        pc = prototypes[c : c + 1]
        pk = torch.cat([prototypes[:c], prototypes[c + 1 :]])
        # attractor: rows are the proxies (the class's samples, its prototype), then the rivals
        m = torch.cat([same, pc, pk]).detach()
        d = torch.exp(m @ same.T / T) * (1 - torch.eye(len(m), len(same)))  # no sample is its own proxy
        numerator, denominator = d[: len(same) + 1], d[len(same) + 1 :].sum(0)
        attractor = torch.log((numerator / (numerator + denominator)).sum(0) / len(same)).sum()
        repellor = x.new_zeros(())
        if len(other):
            u = torch.cat([same, pc, pk]).detach()
            d = torch.exp(u @ other.T / T)
            numerator, denominator = d[: len(same) + 1], d[len(same) + 1 :].sum(0, keepdim=True)
            p = numerator / (numerator + denominator)
            repellor = torch.log(1 - (p[:-1] + p[-1:]) / 2).sum()
        loss = loss - attractor - repellor
    return loss / len(y)


def unit(*rows: tuple[float, ...]) -> Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


# -------------------------------------------------------------------------------------- math
def test_ppp_loss_of_two_orthogonal_samples_by_hand() -> None:
    # class 0 at (1, 0), class 1 at (0, 1), prototypes on them, T = 1. Per class: the attractor
    # -log(e / (e + 1)) (its prototype against the other one) and the repellor -log(1 - 1 / (1 + e))
    # (the other sample, for the sample and the prototype alike): both log(1 + 1/e).
    z = unit((1.0, 0.0), (0.0, 1.0))
    expected = 2 * 2 * math.log(1 + math.exp(-1)) / 2
    assert ppp_loss(z, torch.tensor([0, 1]), z, T=1.0).item() == pytest.approx(expected, rel=1e-6)


CASES = {
    "one class": ([(1.0, 0.2), (0.8, 0.6), (0.3, 1.0)], [1, 1, 1], 0.5),
    "pairs": ([(1.0, 0.0), (0.9, 0.3), (-0.2, 1.0), (0.1, 0.9)], [0, 0, 2, 2], 0.1),
    "singletons": ([(1.0, 0.1), (-1.0, 0.4), (0.3, -1.0)], [0, 1, 2], 1.0),
    "mixed": ([(1.0, 0.0), (0.7, 0.7), (0.0, 1.0), (-0.6, 0.8), (-1.0, -0.1)], [0, 1, 1, 2, 0], 0.2),
}


@pytest.mark.parametrize("case", CASES)
def test_ppp_loss_and_its_gradient_follow_the_formula(case: str) -> None:
    rows, targets, T = CASES[case]
    prototypes = unit((1.0, 0.0), (0.0, 1.0), (-1.0, 1.0))
    x = unit(*rows).requires_grad_()
    y = torch.tensor(targets)
    ours = ppp_loss(x, y, prototypes, T)
    (ours_grad,) = torch.autograd.grad(ours, x)
    x64 = x.detach().clone().requires_grad_()
    reference = ppp_by_formula(x64, y, prototypes, T)
    (reference_grad,) = torch.autograd.grad(reference, x64)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(ours_grad.double(), reference_grad, rtol=1e-4, atol=1e-6)
    assert float(ours_grad.abs().max()) > 1e-3


def test_ppp_loss_gives_no_gradient_to_the_prototypes_and_stays_finite_when_cold() -> None:
    prototypes = unit((1.0, 0.0), (0.0, 1.0), (-1.0, 1.0)).float().requires_grad_()
    x = unit((1.0, 0.1), (0.0, 1.0), (-1.0, 0.2)).float().requires_grad_()
    loss = ppp_loss(x, torch.tensor([0, 1, 1]), prototypes, T=0.005)  # exp(1 / T) overflows float32
    assert torch.isfinite(loss)
    loss.backward()
    assert prototypes.grad is None and torch.isfinite(x.grad).all()  # type: ignore[arg-type]


def test_prototype_moving_average_by_hand() -> None:
    prototypes = unit((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)).float()
    batch = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 2])
    sums = torch.zeros(3, 2).index_add_(0, labels, batch)
    counts = torch.bincount(labels, minlength=3)
    updated = update_prototypes(prototypes, sums, counts, alpha=0.9)

    mean0 = (0.3 / math.hypot(0.3, 0.9), 0.9 / math.hypot(0.3, 0.9))
    moved0 = (0.9 * 1.0 + 0.1 * mean0[0], 0.1 * mean0[1])
    s = 1 / math.sqrt(2)
    moved2 = (0.9 * s, 0.9 * s + 0.1)
    expected = [
        [v / math.hypot(*moved0) for v in moved0],
        [0.0, 1.0],  # absent from the batch: unchanged
        [v / math.hypot(*moved2) for v in moved2],
    ]
    torch.testing.assert_close(updated, torch.tensor(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [0.1, 1.0])
def test_scores_are_the_softmax_of_cosines_over_the_temperature(T: float) -> None:
    prototypes = unit((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)).float()
    x = torch.tensor([[2.0, 2.0], [-3.0, 1.0]])
    cosines = [
        [1 / math.sqrt(2), 1 / math.sqrt(2), -1 / math.sqrt(2)],
        [-3 / math.sqrt(10), 1 / math.sqrt(10), 3 / math.sqrt(10)],
    ]
    expected = [[math.exp(c / T) / sum(math.exp(d / T) for d in row) for c in row] for row in cosines]
    torch.testing.assert_close(prototype_scores(x, prototypes, T), torch.tensor(expected), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ hooks
def test_the_task_loss_is_the_ppp_loss_and_the_step_moves_the_prototypes() -> None:
    torch.manual_seed(0)
    model = TinyClassifier(in_features=8, num_classes=6)
    cope = CoPE(memory_size=10, num_classes=6, p_size=6, alpha=0.8, T=0.2)
    before = cope.prototypes.clone()
    x, y = torch.randn(5, 8), torch.tensor([0, 0, 3, 5, 3])
    module = SimpleNamespace(module=model, predict_logits=lambda batch: model(batch[0]))
    step = TrainingStep(module, [x, y], {}, None, torch.tensor(0.0), 0)  # type: ignore[arg-type]
    loss = cope.task_loss(step)
    z = F.normalize(model(x), dim=1)
    assert loss is not None and loss.item() == pytest.approx(ppp_loss(z, y, before, 0.2).item(), rel=1e-6)
    assert loss.requires_grad
    torch.testing.assert_close(cope.prototypes, before, rtol=0, atol=0)  # moved after the step only

    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    cope.on_train_batch_end(trainer, module, None, [x, y], 0)  # type: ignore[arg-type]
    expected = before.clone()
    for c in (0, 3, 5):
        mean = F.normalize(z[y == c].detach().mean(0), dim=0)
        expected[c] = F.normalize(0.8 * before[c] + 0.2 * mean, dim=0)
    torch.testing.assert_close(cope.prototypes, expected, rtol=1e-5, atol=1e-6)
    cope.on_train_batch_end(trainer, module, None, [x, y], 0)  # type: ignore[arg-type]
    torch.testing.assert_close(cope.prototypes, expected, rtol=0, atol=0)  # one update per step


def test_memory_joins_the_batch_and_evaluation_uses_the_prototypes() -> None:
    dm = online(make_tensor_stream(num_experiences=2, num_classes=4), experience_size=8)  # 5 minis each
    cope = CoPE(memory_size=10, num_classes=4, p_size=6, alpha=0.5, memory_batch_size=4)
    torch.manual_seed(0)
    trainer, model = quiet_trainer(callbacks=[cope]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer.fit(model, datamodule=dm)
    assert cope.buffer.updates == 5 and len(cope.buffer) == 10
    trainer.fit(model, datamodule=dm)
    assert set(cope.buffer.slots.targets.tolist()) == {0, 1, 2, 3}
    trainer.test(model, datamodule=dm)
    # the last row of R: the nearest prototype of each test sample's embedding
    expected = []
    for experience in dm.test_stream:
        x, y = (torch.stack([experience.dataset[i][f] for i in range(len(experience))]) for f in (0, 1))
        with torch.no_grad():
            z = F.normalize(model.module.eval()(x), dim=1)
        expected.append(float(((z @ cope.prototypes.T).argmax(1) == y).float().mean()))
    assert model.accuracy_matrix[-1].tolist() == pytest.approx(expected)
    assert max(expected) > 0.9  # the prototypes learnt something


def online_digits_run(callbacks: list[L.Callback], outputs: int, lr: float) -> StreamResult:
    torch.manual_seed(0)
    dm = online(SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=10), experience_size=10)
    model = ContinualModule(Classifier(MLP(64, outputs, hidden_sizes=(64,)), lr=lr))
    return fit_stream(quiet_trainer(callbacks=callbacks), model, dm, evaluate_initial=False)


def test_cope_beats_naive_on_online_class_incremental_digits() -> None:
    naive = online_digits_run([], outputs=10, lr=0.1)
    # a short stream (29 steps per experience): the prototypes need a faster average than 0.99
    cope = online_digits_run([CoPE(memory_size=200, num_classes=10, p_size=16, alpha=0.9, T=0.1)], outputs=16, lr=0.02)
    # naive 0.182 (forgetting 0.99); CoPE 0.828 with a recency-biased class memory, 0.599 with the
    # per-class reservoir the buffers keep now (full online SplitMNIST: 0.943, bench/reproduce.py)
    assert naive.average_accuracy < 0.25
    assert cope.average_accuracy > naive.average_accuracy + 0.3
    assert cope.forgetting < naive.forgetting - 0.8


# ------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_and_weights_only_checkpoint(tmp_path: Path) -> None:
    dm = online(make_tensor_stream(num_experiences=3), experience_size=8)
    cope = CoPE(memory_size=9, num_classes=6, p_size=6, alpha=0.7, seed=3)
    torch.manual_seed(0)
    trainer, model = quiet_trainer(callbacks=[cope]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = cope.state_dict()
    assert set(state) == {"buffer", "prototypes"} and len(cope.buffer) == 9
    assert not torch.allclose(state["prototypes"], CoPE(memory_size=9, num_classes=6, p_size=6, seed=3).prototypes)

    trainer.save_checkpoint(tmp_path / "cope.ckpt")
    saved = torch.load(tmp_path / "cope.ckpt", weights_only=True)["callbacks"][cope.state_key]
    restored = []
    for source in (state, saved):
        copy = CoPE(memory_size=9, num_classes=6, p_size=6, alpha=0.7, seed=3)
        copy.load_state_dict(source)
        torch.testing.assert_close(copy.prototypes, cope.prototypes.cpu(), rtol=0, atol=0)
        assert copy.buffer.fingerprint() == cope.buffer.fingerprint()
        restored.append(copy)
    # the memories go on alike
    for method in [cope, *restored]:
        method.buffer.update(Candidates.of_experience(dm.train_stream[2]))
    assert {r.buffer.fingerprint() for r in restored} == {cope.buffer.fingerprint()}


def test_initial_prototypes_are_seeded_unit_vectors() -> None:
    a, b = CoPE(10, 5, 3, seed=1).prototypes, CoPE(10, 5, 3, seed=1).prototypes
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5))
    assert not torch.allclose(a, CoPE(10, 5, 3, seed=2).prototypes)
    assert CoPE(10, 5, 3).state_key != CoPE(10, 6, 3).state_key != CoPE(20, 6, 3).state_key


def test_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        callbacks = [CoPE(memory_size=12, num_classes=6, p_size=6, alpha=0.8)]
        return fit_stream(
            checkpointing_trainer(path, callbacks), model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False
        )

    full = run(tmp_path / "full", None, 0)
    resumed = run(tmp_path / "resumed", tmp_path / "full" / "epoch=2.ckpt", 123)  # epoch 2: in experience 1
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


def test_loading_prototypes_of_another_shape_is_an_error() -> None:
    state = CoPE(10, num_classes=5, p_size=3).state_dict()
    with pytest.raises(ValueError, match=r"saved prototypes have shape \(5, 3\), this CoPE keeps \(6, 3\)"):
        CoPE(10, num_classes=6, p_size=3).load_state_dict(state)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"memory_size": 0}, ValueError, r"`memory_size`: expected a positive integer, got 0"),
        ({"num_classes": 1}, ValueError, r"`num_classes`: expected an integer of at least 2, got 1"),
        ({"num_classes": 4.0}, ValueError, r"`num_classes`: expected an integer of at least 2, got 4.0"),
        ({"p_size": 0}, ValueError, r"`p_size`: expected a positive integer, got 0"),
        ({"alpha": 1.5}, ValueError, r"`alpha`: expected a number in \[0, 1\], got 1.5"),
        ({"alpha": "0.9"}, TypeError, r"`alpha`: expected a number in \[0, 1\], got str '0.9'"),
        ({"T": 0.0}, ValueError, r"`T`: expected a positive finite number, got 0.0"),
        ({"T": math.inf}, ValueError, r"`T`: expected a positive finite number, got inf"),
        ({"T": None}, TypeError, r"`T`: expected a positive number, got NoneType None"),
        ({"memory_batch_size": 0}, ValueError, r"`memory_batch_size`: expected a positive integer, got 0"),
        ({"storage": "fifo"}, ValueError, r"CoPE: `storage`: expected one of \['reservoir'.*got 'fifo'"),
        ({"seed": 1.0}, TypeError, r"`seed`: expected an integer, got float 1.0"),
    ],
)
def test_bad_arguments(arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CoPE(**{"memory_size": 10, "num_classes": 4, "p_size": 8, **arguments})


@pytest.mark.parametrize(
    ("num_classes", "p_size", "message"),
    [
        (6, 4, r"`p_size`: CoPE's prototypes have 4 dimensions, but the model's output \(its embedding\) has 6"),
        (5, 6, r"`num_classes`: CoPE keeps 5 prototypes, but the stream has 6 classes"),
    ],
)
def test_a_model_or_stream_that_does_not_fit_is_an_error_at_the_start(
    num_classes: int, p_size: int, message: str
) -> None:
    trainer = quiet_trainer(callbacks=[CoPE(memory_size=8, num_classes=num_classes, p_size=p_size)])
    with pytest.raises(ValueError, match=message):
        trainer.fit(ContinualModule(TinyClassifier(in_features=8, num_classes=6)), datamodule=make_tensor_stream(2))
