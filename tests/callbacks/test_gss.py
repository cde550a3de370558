"""GSS: the scores (max cosine similarity to memory-subset gradients, written out by hand), the
replacement draw (checked statistically against its probabilities), per-sample gradients, batch
positions read from the sampler, replay, forgetting against naive, checkpoints and bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.benchmarks import SplitDigits, online
from lightning_cl.buffers.base import Candidates
from lightning_cl.callbacks.gss import (
    FIRST_SCORE,
    GSS,
    looped_sample_gradients,
    max_cosine_similarity,
    replacement_probability,
    replacement_weights,
    sample_gradients,
)
from lightning_cl.callbacks.replay import Replay
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.models import MLP, Classifier
from tests.callbacks.memory_method_helpers import LinearClassifier, ce_gradient, checkpointing_trainer
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def cosine_by_hand(a: list[float], b: list[float]) -> float:
    dot = sum(u * v for u, v in zip(a, b))
    return dot / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))


def per_sample_by_hand(model: LinearClassifier, x: Tensor, y: Tensor) -> Tensor:
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    return torch.stack([ce_gradient(w, b, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])


# -------------------------------------------------------------------------------------- math
@pytest.mark.parametrize(
    ("gradient", "memory"),
    [
        ([1.0, 0.0], [[1.0, 1.0], [0.0, 1.0]]),
        ([3.0, -4.0], [[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]),
        ([-1.0, -1.0], [[1.0, 1.0]]),
        ([2.0, 1.0, 0.5], [[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]]),
    ],
)
def test_the_score_is_the_largest_cosine_similarity_to_the_memory_gradients(
    gradient: list[float], memory: list[list[float]]
) -> None:
    expected = max(cosine_by_hand(gradient, m) for m in memory)
    got = max_cosine_similarity(torch.tensor([gradient]), torch.tensor(memory))
    assert got.shape == (1,) and got.item() == pytest.approx(expected, abs=1e-6)


def test_replacement_weights_and_probabilities_by_hand() -> None:
    scores = torch.tensor([-0.5, 0.0, 0.5, 0.9])
    # (c - min) / (max - min + 0.01) = (c + 0.5) / 1.41
    assert replacement_weights(scores).tolist() == pytest.approx([0.0, 0.5 / 1.41, 1.0 / 1.41, 1.4 / 1.41])
    # (c_slot + 1) / ((c_new + 1) + (c_slot + 1))
    new, slot = torch.tensor([-0.5, 0.0, 0.8, -1.0]), torch.tensor([0.5, 0.0, -0.2, -1.0])
    assert replacement_probability(new, slot).tolist() == pytest.approx([1.5 / 2.0, 0.5, 0.8 / 2.6, 0.0])


def test_per_sample_gradients_are_the_cross_entropy_gradients_written_out() -> None:
    torch.manual_seed(0)
    model = LinearClassifier()
    x, y = torch.randn(5, 8), torch.tensor([0, 3, 5, 1, 3])
    torch.testing.assert_close(
        sample_gradients(model, [x, y]).double(), per_sample_by_hand(model, x, y), rtol=1e-5, atol=1e-6
    )


class CallsItem(TinyClassifier):
    """A model torch.func cannot batch: its forward reads a Python number from a tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * (1.0 if x.abs().sum().item() >= 0 else 0.0)


class PerTaskBias(L.LightningModule):
    """A model whose forward takes the task labels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.task_bias = nn.Parameter(torch.randn(3, 6))

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        return self.fc(x) + self.task_bias[task_labels]


@pytest.mark.parametrize("group_size", [1, 3])
@pytest.mark.parametrize(
    "make", [lambda: TinyClassifier(in_features=8, num_classes=6), lambda: CallsItem(in_features=8), PerTaskBias]
)
def test_batched_gradients_equal_one_backward_pass_per_group(make: Any, group_size: int) -> None:
    torch.manual_seed(0)
    model = make()
    batch = [torch.randn(6, 8), torch.randint(0, 6, (6,)), torch.randint(0, 3, (6,))]
    if isinstance(model, TinyClassifier):
        batch = batch[:2]
    batched = sample_gradients(model, batch, group_size)
    assert batched.shape == (6 // group_size, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(batched, looped_sample_gradients(model, batch, group_size), rtol=1e-4, atol=1e-6)
    if group_size > 1:  # a group's gradient is the mean of its samples'
        torch.testing.assert_close(
            batched, sample_gradients(model, batch).view(-1, group_size, batched.shape[1]).mean(1), rtol=1e-4, atol=1e-6
        )


# ------------------------------------------------------------------------------ selection
def offer(gss: GSS, model: nn.Module, dm: StreamDataModule, positions: list[int]) -> None:
    experience = dm.train_stream[0]
    gss.select(model, dm.train_stream, Candidates.of_experience(experience, torch.tensor(positions)))


@pytest.mark.parametrize(("memory_size", "entering"), [(8, 4), (6, 2)])
def test_samples_entering_a_memory_with_room_are_scored_against_it(memory_size: int, entering: int) -> None:
    torch.manual_seed(0)
    dm, model = make_tensor_stream(num_experiences=1), LinearClassifier()
    gss = GSS(memory_size=memory_size, mem_strength=5)
    offer(gss, model, dm, [0, 40, 80, 119])
    assert gss.buffer.extras["score"].tolist() == pytest.approx([FIRST_SCORE] * 4)  # nothing to compare with
    offer(gss, model, dm, [10, 50, 90, 100])
    assert gss.buffer.slots.position.tolist() == [0, 40, 80, 119, 10, 50, 90, 100][:memory_size]

    # memory of 4 and batches of 4: one subset, the whole memory, whose gradient is its mean one
    data = dm.train_stream[0].dataset
    memory_x, memory_y = (torch.stack([data[i][f] for i in [0, 40, 80, 119]]) for f in (0, 1))
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    memory_gradient = ce_gradient(w, b, memory_x, memory_y).tolist()
    new_x, new_y = (torch.stack([data[i][f] for i in [10, 50, 90, 100][:entering]]) for f in (0, 1))
    expected = [cosine_by_hand(g.tolist(), memory_gradient) for g in per_sample_by_hand(model, new_x, new_y)]
    assert gss.buffer.extras["score"][4:].tolist() == pytest.approx(expected, abs=1e-5)
    assert max(abs(e) for e in expected) > 0.05


def full_memory(scores: list[float]) -> GSS:
    gss = GSS(memory_size=len(scores), mem_strength=1)
    zeros = torch.zeros(len(scores), dtype=torch.long)
    gss.buffer.update(Candidates(zeros, torch.arange(len(scores)), zeros, zeros), {"score": torch.tensor(scores)})
    return gss


def with_gradients(monkeypatch: pytest.MonkeyPatch, incoming: list[list[float]], memory: list[list[float]]) -> None:
    """Make GSS see these gradients for the incoming samples and the memory subsets."""

    def gradients(self: GSS, *args: Any) -> tuple[Tensor, Tensor]:
        return torch.tensor(incoming), torch.tensor(memory)

    monkeypatch.setattr(GSS, "_gradients", gradients)


def incoming(count: int, first: int = 100) -> Candidates:
    zeros = torch.zeros(count, dtype=torch.long)
    return Candidates(zeros, torch.arange(first, first + count), zeros + 1, zeros)


def test_a_batch_pulling_with_the_memory_replaces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # batch gradient (1, 0.1): cosine 0.995 with the memory's (1, 0); each sample alone would conflict
    with_gradients(monkeypatch, [[3.0, 0.1], [-1.0, 0.1]], [[1.0, 0.0]])
    gss = full_memory([-0.5, 0.0, 0.5, 0.9])
    for _ in range(50):
        gss.select(nn.Linear(1, 1), None, incoming(2))  # type: ignore[arg-type]
    assert gss.buffer.slots.position.tolist() == [0, 1, 2, 3] and gss.steps == 50


def test_replacements_follow_the_score_weights_and_the_replacement_probability(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scores = [-0.5, 0.0, 0.5, 0.9]
    new_gradient = [-0.2, 1.0]  # cosine -0.196 with the memory's: a replacement is likely, not certain
    with_gradients(monkeypatch, [new_gradient], [[1.0, 0.0]])
    new_score = cosine_by_hand(new_gradient, [1.0, 0.0])
    weights = [(c + 0.5) / 1.41 for c in scores]
    expected = [w / sum(weights) * (c + 1) / ((new_score + 1) + (c + 1)) for w, c in zip(weights, scores)]

    gss, trials = full_memory(scores), 2000
    start = gss.state_dict()
    replaced = torch.zeros(len(scores) + 1)
    for trial in range(trials):
        gss.load_state_dict({**start, "steps": trial})  # a fresh draw from the same memory
        gss.select(nn.Linear(1, 1), None, incoming(1))  # type: ignore[arg-type]
        changed = (gss.buffer.slots.position != torch.arange(len(scores))).nonzero().flatten().tolist()
        assert len(changed) <= 1
        replaced[changed[0] if changed else -1] += 1
        if changed:  # the winner brings its own score
            assert gss.buffer.extras["score"][changed[0]].item() == pytest.approx(new_score, abs=1e-6)
    frequency = replaced / trials
    expected.append(1 - sum(expected))  # nothing replaced
    for slot, p in enumerate(expected):
        assert abs(frequency[slot].item() - p) < 4 * math.sqrt(p * (1 - p) / trials) + 1e-9, (slot, frequency, expected)
    assert frequency[0].item() == 0.0  # the least similar slot is never drawn


@pytest.mark.parametrize("scores", [[0.2, 0.4, 0.6, 0.8], [0.1, 0.1, 0.1, 0.1]])
def test_a_conflicting_batch_takes_distinct_slots_and_keeps_the_size(
    monkeypatch: pytest.MonkeyPatch, scores: list[float]
) -> None:
    # all-equal scores have no positive weight: the draw falls back to uniform instead of failing
    with_gradients(monkeypatch, [[-1.0, 0.0], [-1.0, 0.5], [-1.0, -0.5], [-2.0, 0.1]], [[1.0, 0.0]])
    gss = full_memory(scores)
    for step in range(20):
        gss.select(nn.Linear(1, 1), None, incoming(4, first=100 + 4 * step))  # type: ignore[arg-type]
        positions = gss.buffer.slots.position.tolist()
        assert len(positions) == 4 and len(set(positions)) == 4  # no slot taken twice in one draw
    assert min(positions) >= 100


# ---------------------------------------------------------------------------------- training
class BatchSizes(TinyClassifier):
    """Records the size of every batch its training_step receives."""

    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=6)
        self.sizes: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.sizes.append(len(batch[0]))
        return F.cross_entropy(self(batch[0]), batch[1])


def test_shuffled_batches_over_epochs_are_located_and_replayed() -> None:
    # a mislocated batch fails the label check: shuffled loaders over two epochs and two experiences
    dm = make_tensor_stream(num_experiences=2, batch_size=8)
    gss = GSS(memory_size=12, mem_strength=3, memory_batch_size=4)
    torch.manual_seed(0)
    user = BatchSizes()
    trainer, model = quiet_trainer(max_epochs=2, callbacks=[gss]), ContinualModule(user)
    trainer.fit(model, datamodule=dm)
    # 60 samples: 8 batches per epoch, the last one of 4; the memory is empty at the first step
    assert user.sizes[0] == 8 and user.sizes.count(12) >= 12 and set(user.sizes) <= {8, 12}
    assert len(gss.buffer) == 12 and set(gss.buffer.slots.experience.tolist()) == {0}
    assert gss.steps == 2 * 8
    trainer.fit(model, datamodule=dm)
    assert len(gss.buffer) == 12 and gss.steps == 2 * 2 * 8
    assert 1 in set(gss.buffer.slots.experience.tolist())  # the new experience's samples got in


def test_a_batch_whose_labels_do_not_match_its_positions_is_an_error() -> None:
    experience = make_tensor_stream(num_experiences=2).train_stream[0]  # classes 0, 1 and 2
    gss = GSS(memory_size=12)
    gss._check_labels(experience, torch.tensor([0, 25, 59]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="GSS: the labels of the batch are not those of the samples at the positions"):
        gss._check_labels(experience, torch.tensor([0, 25, 59]), torch.tensor([0, 1, 1]))


def online_digits_run(callbacks: list[L.Callback]) -> StreamResult:
    torch.manual_seed(0)
    dm = online(SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=10), experience_size=10)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(64,)), lr=0.1))
    return fit_stream(quiet_trainer(callbacks=callbacks), model, dm, evaluate_initial=False)


def test_gss_beats_naive_on_online_class_incremental_digits() -> None:
    naive = online_digits_run([])
    gss = online_digits_run([GSS(memory_size=200, mem_strength=5)])
    # when written: naive 0.182 (forgetting 0.99), GSS 0.419 (forgetting 0.65)
    assert naive.average_accuracy < 0.25
    assert gss.average_accuracy > naive.average_accuracy + 0.15
    assert gss.forgetting < naive.forgetting - 0.2


# ------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_and_weights_only_checkpoint(tmp_path: Path) -> None:
    dm = make_tensor_stream(num_experiences=3, batch_size=8)
    gss = GSS(memory_size=10, mem_strength=2, seed=3)
    torch.manual_seed(0)
    trainer, model = quiet_trainer(callbacks=[gss]), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = gss.state_dict()
    assert set(state) == {"buffer", "steps"} and len(gss.buffer) == 10 and state["steps"] == 2 * 40 // 8

    trainer.save_checkpoint(tmp_path / "gss.ckpt")
    saved = torch.load(tmp_path / "gss.ckpt", weights_only=True)["callbacks"][gss.state_key]
    restored = []
    for source in (state, saved):
        copy = GSS(memory_size=10, mem_strength=2, seed=3)
        copy.load_state_dict(source)
        assert copy.steps == gss.steps and copy.buffer.fingerprint() == gss.buffer.fingerprint()
        for key, value in gss.buffer.state_dict().items():
            if isinstance(value, Tensor):
                torch.testing.assert_close(copy.buffer.state_dict()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(copy.buffer.extras["score"], gss.buffer.extras["score"], rtol=0, atol=0)
        restored.append(copy)
    # the restored memories go on as the original: the same samples kept, with the same scores
    experience = dm.train_stream[2]
    for memory in [gss, *restored]:
        for start in range(0, 40, 8):
            memory.select(
                model.module, dm.train_stream, Candidates.of_experience(experience, torch.arange(start, start + 8))
            )
    assert {r.buffer.fingerprint() for r in restored} == {gss.buffer.fingerprint()}
    for r in restored:
        torch.testing.assert_close(r.buffer.extras["score"], gss.buffer.extras["score"], rtol=0, atol=0)


def test_two_instances_do_not_collide() -> None:
    assert GSS(memory_size=10).state_key != GSS(memory_size=20).state_key
    assert GSS(memory_size=10, mem_strength=2).state_key != GSS(memory_size=10, mem_strength=3).state_key


def test_resume_in_the_middle_of_an_experience_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        callbacks = [GSS(memory_size=12, mem_strength=3)]
        return fit_stream(
            checkpointing_trainer(path, callbacks), model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False
        )

    full = run(tmp_path / "full", None, 0)
    resumed = run(tmp_path / "resumed", tmp_path / "full" / "epoch=2.ckpt", 123)  # epoch 2: in experience 1
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["memory_size", "mem_strength", "memory_batch_size"])
@pytest.mark.parametrize("value", [0, -3, 2.0, True])
def test_sizes_must_be_positive_integers(name: str, value: Any) -> None:
    arguments = {"memory_size": 10, name: value}
    with pytest.raises(ValueError, match=rf"`{name}`: expected a positive integer, got {value!r}"):
        GSS(**arguments)


def test_seed_must_be_an_integer() -> None:
    with pytest.raises(TypeError, match=r"`seed`: expected an integer, got str '1'"):
        GSS(memory_size=10, seed="1")  # type: ignore[arg-type]


def test_a_training_set_changed_by_another_callback_is_an_error() -> None:
    dm = make_tensor_stream(num_experiences=2, batch_size=8)
    trainer = quiet_trainer(callbacks=[Replay(memory_size=6, batch_mode="concat"), GSS(memory_size=6)])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer.fit(model, datamodule=dm)  # nothing to concatenate yet
    with pytest.raises(ValueError, match=r"training set holds 66 samples, not the experience's 60.*Replay in concat"):
        trainer.fit(model, datamodule=dm)
