"""MIR: interference scores against a virtual SGD step written out by hand, the replay of the most
interfered samples, the memory (per experience and per mini-experience), forgetting against naive,
checkpoints, resume and bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import online
from lightning_cl.buffers.base import Candidates
from lightning_cl.buffers.reservoir import ReservoirBuffer
from lightning_cl.callbacks.mir import MIR, interference_scores
from lightning_cl.core.callback import TrainingStep
from tests.callbacks.memory_method_helpers import (
    LinearClassifier,
    ce_by_hand,
    ce_gradient,
    checkpointing_trainer,
    digits_run,
)
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def batches(seed: int = 0, current: int = 8, memory: int = 12) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(current, 8, generator=g), torch.randn(memory, 8, generator=g)
    y, ym = torch.randint(0, 6, (current,), generator=g), torch.randint(0, 6, (memory,), generator=g)
    return x, y, xm, ym


def virtual_step_by_hand(model: LinearClassifier, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
    """The weights after one SGD step of ``lr`` on the mean cross-entropy of ``(x, y)``."""
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    g = ce_gradient(w, b, x, y)
    return w.double() - lr * g[: w.numel()].view_as(w), b.double() - lr * g[w.numel() :]


def by_hand_scores(model: LinearClassifier, x: Tensor, y: Tensor, xm: Tensor, ym: Tensor, lr: float) -> Tensor:
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    w_virtual, b_virtual = virtual_step_by_hand(model, x, y, lr)
    return ce_by_hand(w_virtual, b_virtual, xm, ym) - ce_by_hand(w, b, xm, ym)


def step_of(model: LinearClassifier, lr: float, batch: tuple[Tensor, Tensor], extra: dict[str, Any]) -> TrainingStep:
    """A training step as ContinualModule builds it (its module reduced to what MIR reads)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    module = SimpleNamespace(
        module=model, trainer=SimpleNamespace(optimizers=[optimizer]), predict_logits=lambda b: model(b[0])
    )
    loss = F.cross_entropy(model(batch[0]), batch[1])
    return TrainingStep(module, batch, extra, loss, loss, 0)  # type: ignore[arg-type]


def memory_key(mir: MIR) -> str:
    """The name under which MIR's memory batch reaches the training step (once it stores something)."""
    dm = make_tensor_stream(2)
    mir.buffer.update(Candidates.of_experience(dm.train_stream[0]))
    (key,) = mir.joint_datasets(dm, dm.train_stream[1]).keys()
    return key


# -------------------------------------------------------------------------------------- math
@pytest.mark.parametrize("lr", [0.05, 0.5, 2.0])
def test_scores_are_the_loss_increase_under_a_virtual_sgd_step(lr: float) -> None:
    torch.manual_seed(0)
    model = LinearClassifier()
    x, y, xm, ym = batches()
    w_virtual, b_virtual = virtual_step_by_hand(model, x, y, lr)
    virtual = {"fc.weight": w_virtual.float(), "fc.bias": b_virtual.float()}
    scores = interference_scores(model, virtual, [xm, ym])
    torch.testing.assert_close(scores.double(), by_hand_scores(model, x, y, xm, ym, lr), rtol=1e-4, atol=1e-5)
    assert not scores.requires_grad
    assert float(scores.abs().max()) > 0.01


@pytest.mark.parametrize(("memory_batch_size", "replayed"), [(1, 1), (3, 3), (12, 12), (50, 12)])
def test_the_most_interfered_samples_are_replayed(memory_batch_size: int, replayed: int) -> None:
    torch.manual_seed(0)
    model, lr = LinearClassifier(), 0.5
    weights = [p.detach().clone() for p in model.parameters()]
    x, y, xm, ym = batches(seed=1)
    mir = MIR(memory_size=20, subsample=12, memory_batch_size=memory_batch_size)
    step = step_of(model, lr, (x, y), {memory_key(mir): (xm, ym)})
    term = mir.loss_terms(step)["mir"]

    scores = by_hand_scores(model, x, y, xm, ym, lr)
    top = torch.argsort(scores, descending=True)[:replayed]
    w, b = weights
    expected = ce_by_hand(w, b, xm[top], ym[top]).mean()
    torch.testing.assert_close(term.double(), expected, rtol=1e-5, atol=1e-6)
    assert term.requires_grad  # it trains the model at its current weights
    for p, before in zip(model.parameters(), weights):
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)  # the virtual step leaves them
    if replayed < 12:
        # not the least interfered ones, nor all of them
        bottom = torch.argsort(scores)[:replayed]
        assert not torch.allclose(term.double(), ce_by_hand(w, b, xm[bottom], ym[bottom]).mean())


def test_no_term_without_memory() -> None:
    dm = make_tensor_stream(2)
    assert MIR(memory_size=20).joint_datasets(dm, dm.train_stream[0]) == {}  # no memory loader while empty
    model = LinearClassifier()
    x, y, xm, ym = batches()
    mir = MIR(memory_size=20, subsample=12)
    assert mir.loss_terms(step_of(model, 0.1, (x, y), {memory_key(mir): (xm[:0], ym[:0])})) == {}
    assert mir.loss_terms(step_of(model, 0.1, (x, y), {})) == {}


def test_the_term_is_a_replay_of_the_stored_samples_in_training() -> None:
    dm = make_tensor_stream(num_experiences=3)
    mir = MIR(memory_size=12, subsample=6, memory_batch_size=3)
    trainer, model = quiet_trainer(callbacks=[mir]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer.fit(model, datamodule=dm)
    assert "train/mir_loss" not in trainer.callback_metrics  # nothing stored during the first experience
    assert len(mir.buffer) == 12 and sorted(mir.buffer.slots.targets.tolist()) == [0] * 6 + [1] * 6
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["train/mir_loss"]) > 0
    # class balanced over the classes seen so far, never over memory_size
    assert sorted(mir.buffer.slots.targets.tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_an_online_stream_fills_the_memory_at_every_mini_experience() -> None:
    dm = online(make_tensor_stream(num_experiences=2, num_classes=4), experience_size=8)  # 40 samples: 5 minis
    mir = MIR(memory_size=10, subsample=4, memory_batch_size=2, storage="reservoir")
    trainer, model = quiet_trainer(callbacks=[mir]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer.fit(model, datamodule=dm)
    assert mir.buffer.updates == 5  # one per mini-experience, none more at the experience's end
    assert float(trainer.callback_metrics["train/mir_loss"]) > 0  # replayed within the first experience
    assert len(mir.buffer) == 10 and set(mir.buffer.slots.experience.tolist()) == {0}
    trainer.fit(model, datamodule=dm)
    assert mir.buffer.updates == 10
    assert set(mir.buffer.slots.experience.tolist()) == {0, 1}


# ---------------------------------------------------------------------------------- training
def test_mir_beats_naive_on_class_incremental_digits() -> None:
    naive = digits_run([])
    mir = digits_run([MIR(memory_size=200, subsample=50, memory_batch_size=10)])
    # when written: naive 0.166 (forgetting 0.99), MIR 0.785 (forgetting 0.14)
    assert naive.average_accuracy < 0.25
    assert mir.average_accuracy > naive.average_accuracy + 0.45
    assert mir.forgetting < naive.forgetting - 0.6


# ------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_and_weights_only_checkpoint(tmp_path: Path) -> None:
    dm = make_tensor_stream(num_experiences=3)
    mir = MIR(memory_size=9, subsample=4, memory_batch_size=2, seed=3)
    trainer, model = quiet_trainer(callbacks=[mir]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = mir.state_dict()
    assert set(state) == {"buffer"} and len(mir.buffer) == 9

    trainer.save_checkpoint(tmp_path / "mir.ckpt")
    saved = torch.load(tmp_path / "mir.ckpt", weights_only=True)["callbacks"][mir.state_key]
    restored = {}
    for name, source in (("state_dict", state), ("checkpoint", saved)):
        restored[name] = MIR(memory_size=9, subsample=4, memory_batch_size=2, seed=3)
        restored[name].load_state_dict(source)
        assert restored[name].buffer.fingerprint() == mir.buffer.fingerprint()
        for key, value in mir.buffer.state_dict().items():
            restored_value = restored[name].buffer.state_dict()[key]
            if isinstance(value, Tensor):
                torch.testing.assert_close(restored_value, value, rtol=0, atol=0)
            else:
                assert restored_value == value
    # the restored buffers go on as the original: the next update keeps the same samples
    for buffer in [mir.buffer, *(r.buffer for r in restored.values())]:
        buffer.update(Candidates.of_experience(dm.train_stream[2]))
    assert {r.buffer.fingerprint() for r in restored.values()} == {mir.buffer.fingerprint()}


def test_two_instances_do_not_collide() -> None:
    assert MIR(memory_size=10).state_key != MIR(memory_size=20).state_key
    assert MIR(subsample=10).state_key != MIR(subsample=20).state_key


# epochs 0-1 train experience 0, 2-3 experience 1: "epoch=2" is in the middle of experience 1
@pytest.mark.parametrize("name", ["epoch=1", "epoch=2"])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, name: str) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        callbacks = [MIR(memory_size=12, subsample=6, memory_batch_size=3)]
        return fit_stream(
            checkpointing_trainer(path, callbacks), model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False
        )

    full = run(tmp_path / "full", None, 0)
    resumed = run(tmp_path / "resumed", tmp_path / "full" / f"{name}.ckpt", 123)
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["memory_size", "subsample", "memory_batch_size"])
@pytest.mark.parametrize("value", [0, -4, 2.0, True])
def test_sizes_must_be_positive_integers(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"`{name}`: expected a positive integer, got {value!r}"):
        MIR(**{name: value})


def test_unknown_storage() -> None:
    with pytest.raises(
        ValueError, match=r"MIR: `storage`: expected one of \['reservoir', 'class_balanced'.*got 'fifo'"
    ):
        MIR(storage="fifo")


def test_a_buffer_instance_is_used_as_the_storage() -> None:
    buffer = ReservoirBuffer(memory_size=7)
    mir = MIR(storage=buffer)
    assert mir.buffer is buffer and mir.memory_size == 7
