"""GenerativeReplay: replayed samples and their labels, the batch the user's step sees, the weighted term
by hand, the generator's training on mixed batches, forgetting against naive, checkpoints and bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import SplitDigits
from lightning_cl.callbacks.generative_replay import GenerativeReplay
from lightning_cl.core.callback import TrainingStep
from lightning_cl.core.data import _mix_seed
from lightning_cl.models import MLP, Classifier
from lightning_cl.models.vae import MlpVAE
from tests.callbacks.replay_helpers import digits, naive_accuracy
from tests.conftest import quiet_trainer


def small_vae() -> MlpVAE:
    return MlpVAE((1, 8, 8), latent_dim=4, encoder_sizes=(32,), decoder_sizes=(32,))


class Recorder(L.LightningModule):
    """A user's classifier that keeps every batch its training_step receives, with Lightning's batch index."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.batches: list[tuple[int, list[Tensor]]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        total = self.trainer.fit_loop.epoch_loop.total_batch_idx
        self.batches.append((total, [t.detach().clone() for t in batch]))
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TableGenerator(nn.Module):
    """A user's generator: ``sample`` decodes Gaussian codes linearly; ``loss`` records every batch size."""

    def __init__(self, flat: bool = True) -> None:
        super().__init__()
        self.decoder = nn.Linear(2, 64)
        self.flat = flat
        self.batch_sizes: list[int] = []

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, 2, generator=generator).to(self.decoder.weight.device)
        out = self.decoder(z)
        return out if self.flat else out.view(n, 1, 8, 8)

    def loss(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(len(x))
        return (x.flatten(1) - self.decoder(torch.ones(len(x), 2, device=x.device))).pow(2).sum()


def two_experiences(callback: GenerativeReplay, user: L.LightningModule, task_labels: bool = False, **trainer: Any):
    torch.manual_seed(0)
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)), task_labels=task_labels, batch_size=32)
    trainer_ = quiet_trainer(callbacks=[callback], **trainer)
    model = ContinualModule(user)
    for _ in range(2):
        trainer_.fit(model, datamodule=dm)
    return trainer_, model, dm


# ------------------------------------------------------------------------------------- replay
@pytest.mark.parametrize("task_labels", [False, True], ids=["class-incremental", "task-labels"])
def test_step_sees_the_batch_then_replay_labelled_by_the_old_solver(task_labels: bool) -> None:
    callback = GenerativeReplay(generator=small_vae(), replay_size=7, generator_epochs=2, seed=3)
    user = Recorder()
    user_batches = user.batches
    two_experiences(callback, user, task_labels=task_labels, limit_train_batches=4)
    first, second = user_batches[:4], user_batches[4:]
    assert [len(b[0]) for _, b in first] == [32] * 4  # experience 0: nothing to replay yet
    assert [len(b[0]) for _, b in second] == [39] * 4  # 32 digits 2 and 3, then 7 generated
    teacher, old_generator = callback._teacher, callback._old_generator
    assert teacher is not None and old_generator is not None
    for total, batch in second:
        assert set(batch[1][:32].tolist()) <= {2, 3}
        rng = torch.Generator().manual_seed(_mix_seed(3, 1, total))
        with torch.no_grad():
            expected = old_generator.sample(7, generator=rng).reshape(7, 1, 8, 8)
            torch.testing.assert_close(batch[0][32:], expected, rtol=0, atol=0)
            torch.testing.assert_close(batch[1][32:], teacher(expected).argmax(dim=1), rtol=0, atol=0)
        if task_labels:
            assert batch[2][32:].tolist() == [int(batch[2][0])] * 7 == [1] * 7
    # the old solver is the user's module as it was when experience 1 started
    labels = torch.cat([b[1][32:] for _, b in second])
    assert set(labels.tolist()) <= set(range(10))
    samples = {tuple(b[0][32].flatten().tolist()) for _, b in second}
    assert len(samples) == 4  # every step draws new samples


def test_increasing_replay_size_scales_with_the_experience_index() -> None:
    callback = GenerativeReplay(generator=small_vae(), increasing_replay_size=True, generator_epochs=1)
    user = Recorder()
    torch.manual_seed(0)
    dm = SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=16)
    trainer = quiet_trainer(callbacks=[callback], limit_train_batches=2)
    model = ContinualModule(user)
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert [len(b[0]) for _, b in user.batches] == [16, 16, 32, 32, 48, 48]


def test_weighted_replay_term_by_hand() -> None:
    callback = GenerativeReplay(
        generator=small_vae(), replay_size=5, is_weighted_replay=True, replay_loss_weight=0.5,
        replay_loss_weight_factor=0.9, generator_epochs=1, seed=1,
    )  # fmt: skip
    user = Recorder()
    user_batches = user.batches
    trainer, _, _ = two_experiences(callback, user, limit_train_batches=3)
    # the batch is left alone; the weight decays once per step of experience 1
    assert [len(b[0]) for _, b in user_batches] == [32] * 6
    assert callback._weight == pytest.approx(0.5 * 0.9**3)
    assert float(trainer.callback_metrics["train/generative_replay_loss"]) > 0

    teacher, old_generator = callback._teacher, callback._old_generator
    assert teacher is not None and old_generator is not None
    loop = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(total_batch_idx=11)))
    module = SimpleNamespace(module=user, trainer=loop)
    batch = user_batches[-1][1]
    step = TrainingStep(module, batch, {}, None, torch.tensor(0.0), 0)  # type: ignore[arg-type]
    term = callback.loss_terms(step)["generative_replay"]
    with torch.no_grad():
        x = old_generator.sample(5, generator=torch.Generator().manual_seed(_mix_seed(1, 1, 11))).reshape(5, 1, 8, 8)
        y = teacher(x).argmax(dim=1)
    expected = 0.5 * 0.9**3 * F.cross_entropy(user(x), y)
    torch.testing.assert_close(term, expected)
    assert term.requires_grad
    assert callback._weight == pytest.approx(0.5 * 0.9**4)


# ---------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("flat", [True, False], ids=["flat-samples", "shaped-samples"])
def test_generator_trains_on_real_batches_joined_by_old_samples(flat: bool) -> None:
    generator = TableGenerator(flat=flat)
    callback = GenerativeReplay(generator=generator, replay_size=5, generator_epochs=2, generator_batch_size=100)
    before = generator.decoder.weight.detach().clone()
    _, _, dm = two_experiences(callback, Recorder(), limit_train_batches=2)
    sizes = [len(e.dataset) for e in dm.train_stream[:2]]  # 289 and 278 digits
    exp0 = [min(100, sizes[0] - s) for s in range(0, sizes[0], 100)]
    exp1 = [min(100, sizes[1] - s) + 5 for s in range(0, sizes[1], 100)]
    assert generator.batch_sizes == [*exp0, *exp0, *exp1, *exp1]
    assert not torch.equal(generator.decoder.weight, before)  # its own optimizer trained it
    assert len(callback.generator_losses) == 2
    assert not generator.training and generator.decoder.weight.device.type == "cpu"


def test_generator_epochs_default_to_the_trainers_and_the_global_rng_is_untouched() -> None:
    callback = GenerativeReplay(generator=TableGenerator())
    dm = digits()
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback], limit_train_batches=1)
    torch.manual_seed(0)
    model = ContinualModule(Recorder())
    trainer.fit(model, datamodule=dm)
    assert len(callback.generator_losses) == 3
    # the generator trains under a forked, seeded RNG: the global stream goes on as before
    fresh = GenerativeReplay(generator=small_vae(), generator_epochs=1)
    fresh.on_experience_start(trainer, model, dm.train_stream[0])
    state = torch.get_rng_state()
    fresh.on_experience_end(trainer, model, dm.train_stream[0])
    assert torch.equal(torch.get_rng_state(), state)
    assert len(fresh.generator_losses) == 1


def test_default_generator_fits_the_stream() -> None:
    callback = GenerativeReplay(generator_epochs=1)
    two_experiences(callback, Recorder(), limit_train_batches=1)
    generator = callback.generator
    assert isinstance(generator, MlpVAE)
    assert generator.shape == (1, 8, 8) and generator.input_range == (0.0, 1.0)


# ------------------------------------------------------------------------------------ training
def test_beats_naive_on_class_incremental_digits() -> None:
    callback = GenerativeReplay(generator_epochs=20)
    torch.manual_seed(0)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(64,)), lr=0.1))
    result = fit_stream(quiet_trainer(max_epochs=10, callbacks=[callback]), model, digits(), evaluate_initial=False)
    naive = naive_accuracy(epochs=10)
    # naive 0.20 (only the last two digits), generative replay 0.66 when written
    assert naive < 0.25
    assert result.average_accuracy > naive + 0.3
    assert float(result.accuracy_matrix[-1, :4].mean()) > 0.4  # the replayed experiences are remembered


# --------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("default_generator", [True, False], ids=["default-vae", "user-generator"])
def test_checkpoint_round_trip(tmp_path: Path, default_generator: bool) -> None:
    make = (lambda: None) if default_generator else small_vae
    callback = GenerativeReplay(generator=make(), replay_size=6, generator_epochs=1)
    user = Recorder()
    trainer, _, _ = two_experiences(callback, user, limit_train_batches=2)
    state = callback.state_dict()
    expected_keys = {"experience", "trained", "replay_loss_weight", "generator_replay_loss_weight", "shape"}
    expected_keys |= {"generator", "old_generator", "teacher"}
    assert set(state) == expected_keys | ({"default_generator"} if default_generator else set())
    assert state["experience"] == 1 and state["trained"] and state["shape"] == [1, 8, 8]

    path = tmp_path / "generative_replay.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"][callback.state_key]
    restored = GenerativeReplay(generator=make(), replay_size=6, generator_epochs=1)
    restored.load_state_dict(saved)
    again = restored.state_dict()
    assert again.keys() == state.keys()
    for key in ("experience", "trained", "shape", "replay_loss_weight", "default_generator"):
        assert again.get(key) == state.get(key)
    for key in ("generator", "old_generator", "teacher"):
        assert again[key].keys() == state[key].keys()
        for name, value in state[key].items():
            torch.testing.assert_close(again[key][name], value, rtol=0, atol=0)
    assert restored.generator is not None and callback.generator is not None
    for name, value in callback.generator.state_dict().items():
        torch.testing.assert_close(restored.generator.state_dict()[name], value, rtol=0, atol=0)

    # the restored old generator and old solver (rebuilt at first use) replay the same labelled samples
    loop = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(total_batch_idx=4)))
    module = SimpleNamespace(module=user, trainer=loop)
    batch = user.batches[-1][1]
    for ours, theirs in zip(callback._replay_batch(module, batch), restored._replay_batch(module, batch)):  # type: ignore[arg-type]
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)


def test_two_instances_do_not_collide() -> None:
    assert GenerativeReplay(replay_size=10).state_key != GenerativeReplay(replay_size=20).state_key


def test_run_resumed_mid_experience_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    def run(path: Path, ckpt: Path | None) -> tuple[Any, ContinualModule]:
        saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        callback = GenerativeReplay(generator=small_vae(), replay_size=8, generator_epochs=2)
        trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saver, callback],
                                limit_train_batches=3)  # fmt: skip
        torch.manual_seed(0)
        model = ContinualModule(Recorder())
        dm = SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=16)
        return fit_stream(trainer, model, dm, ckpt_path=ckpt, evaluate_initial=False), model

    full, model = run(tmp_path / "full", None)
    # epochs 0-1 train experience 0, 2-3 experience 1: "epoch=2" is in the middle of experience 1,
    # where no on_experience_start runs: the generators and the old solver come from the checkpoint
    torch.manual_seed(123)
    resumed, resumed_model = run(tmp_path / "resumed", tmp_path / "full" / "epoch=2.ckpt")
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v)


# ----------------------------------------------------------------------------------- bad input
class NoSeedGenerator(nn.Module):
    def sample(self, n: int) -> Tensor:
        return torch.zeros(n, 64)

    def loss(self, x: Tensor) -> Tensor:
        return x.sum()


class NoLoss(nn.Module):
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros(n, 64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"replay_size": 0}, ValueError, "`replay_size`"),
        ({"replay_size": -3}, ValueError, "`replay_size`"),
        ({"replay_size": 2.5}, ValueError, "`replay_size`"),
        ({"replay_size": True}, ValueError, "`replay_size`"),
        ({"generator": object()}, TypeError, "`generator`.*nn.Module"),
        ({"generator": nn.Linear(2, 2)}, TypeError, "`generator`.*`sample`"),
        ({"generator": NoLoss()}, TypeError, "`generator`.*`loss`"),
        ({"generator": NoSeedGenerator()}, TypeError, "`generator`.*generator=torch.Generator"),
        ({"replay_size": 5, "increasing_replay_size": True}, ValueError, "`increasing_replay_size`"),
        ({"increasing_replay_size": 1}, TypeError, "`increasing_replay_size`"),
        ({"is_weighted_replay": "yes"}, TypeError, "`is_weighted_replay`"),
        ({"replay_loss_weight": -1.0}, ValueError, "`replay_loss_weight`"),
        ({"replay_loss_weight_factor": "x"}, TypeError, "`replay_loss_weight_factor`"),
        ({"generator_epochs": 0}, ValueError, "`generator_epochs`"),
        ({"generator_batch_size": -1}, ValueError, "`generator_batch_size`"),
        ({"generator_lr": 0.0}, ValueError, "`generator_lr`"),
        ({"generator_lr": "fast"}, TypeError, "`generator_lr`"),
        ({"generator_weight_decay": -0.1}, ValueError, "`generator_weight_decay`"),
        ({"seed": 1.5}, TypeError, "`seed`"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GenerativeReplay(**kwargs)


class WrongShape(TableGenerator):
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros(n, 5)


def test_samples_that_do_not_fit_the_stream_fail_when_training_starts() -> None:
    trainer = quiet_trainer(callbacks=[GenerativeReplay(generator=WrongShape())], limit_train_batches=1)
    with pytest.raises(ValueError, match=r"`generator`: WrongShape.sample\(2\) returned shape \[2, 5\].*\[1, 8, 8\]"):
        trainer.fit(ContinualModule(Recorder()), datamodule=digits())


def test_a_user_generator_checkpoint_needs_the_generator() -> None:
    state = GenerativeReplay(generator=small_vae()).state_dict()
    with pytest.raises(RuntimeError, match="pass the same `generator`"):
        GenerativeReplay().load_state_dict(state)
