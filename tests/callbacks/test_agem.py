"""A-GEM: the projection against its closed form and GEM's one-constraint program, the projected
gradient written into ``p.grad`` against a hand-computed one, forgetting against naive, checkpoints,
resume and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.callbacks.agem import AGEM, agem_projection
from lightning_cl.callbacks.gem import gem_projection
from lightning_cl.core.data import _mix_seed
from tests.callbacks.memory_method_helpers import (
    GradientRecorder,
    LinearClassifier,
    WithSpareHead,
    ce_gradient,
    checkpointing_trainer,
    digits_run,
    permuted_digits,
    samples,
)
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def vec(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------ the projection
@pytest.mark.parametrize(
    ("g", "reference", "expected"),
    [
        (vec(1.0, -1.0), vec(0.0, 1.0), vec(1.0, 0.0)),  # g.r = -1, r.r = 1: g + r
        (vec(1.0, -2.0), vec(1.0, 1.0), vec(1.5, -1.5)),  # g.r = -1, r.r = 2: g + r / 2
        (vec(-3.0, 1.0), vec(2.0, 0.0), vec(0.0, 1.0)),  # g.r = -6, r.r = 4: g + 1.5 r
        (vec(1.0, 1.0), vec(0.0, 1.0), vec(1.0, 1.0)),  # no conflict
        (vec(1.0, 0.0), vec(0.0, 1.0), vec(1.0, 0.0)),  # orthogonal: no conflict either
    ],
)
def test_projection_matches_the_closed_form(g: Tensor, reference: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(agem_projection(g, reference), expected)


@pytest.mark.parametrize("seed", range(8))
def test_projection_is_gems_program_with_one_constraint(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    g, reference = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    z = agem_projection(g, reference)
    torch.testing.assert_close(z, gem_projection(g, reference[None], margin=0.0, eps=0.0))
    assert float(z @ reference) >= -1e-12  # never against the reference gradient
    if float(g @ reference) < 0:
        torch.testing.assert_close(z @ reference, torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=1e-12)
        # the removed part is along the reference only
        torch.testing.assert_close(
            (g - z) @ torch.stack([-reference[1], reference[0]]), torch.tensor(0.0, dtype=torch.float64)
        )


def test_no_conflict_returns_the_gradient_itself() -> None:
    g = vec(1.0, 2.0)
    assert agem_projection(g, vec(1.0, -0.5)) is g


def test_a_zero_reference_leaves_the_gradient() -> None:
    torch.testing.assert_close(agem_projection(vec(1.0, 2.0), vec(0.0, 0.0)), vec(1.0, 2.0))


# ------------------------------------------------------------------- the gradient in p.grad
@pytest.mark.parametrize("sample_size", [64, 7])
def test_the_projected_gradient_is_written_into_the_parameters(sample_size: int) -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3)
    before, after = GradientRecorder(), GradientRecorder()
    agem = AGEM(patterns_per_experience=10, sample_size=sample_size, seed=5)
    trainer = quiet_trainer(max_epochs=2, callbacks=[before, agem, after])
    model = ContinualModule(LinearClassifier(lr=0.5))
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert len(agem.memory) == 30

    # the memory as one batch: experiences in order, each in its stored order
    stored = [samples(dm.train_stream[e].dataset, agem.memory.position[agem.memory.experience == e]) for e in range(3)]
    projected = 0
    for raw, edited in zip(before.steps, after.steps):
        weight, bias = raw["params"]
        x, y = raw["batch"]
        g = ce_gradient(weight, bias, x, y)
        torch.testing.assert_close(raw["grad"], g, rtol=1e-5, atol=1e-6)
        past = raw["experience"]
        if past == 0:
            torch.testing.assert_close(edited["grad"], raw["grad"], rtol=0, atol=0)
            continue
        memory_x = torch.cat([stored[e][0] for e in range(past)])
        memory_y = torch.cat([stored[e][1] for e in range(past)])
        # the draw is seeded by (seed, global step), as documented: every rank and a resumed run draw the same
        pick = torch.randperm(len(memory_y), generator=torch.Generator().manual_seed(_mix_seed(5, raw["global_step"])))
        pick = pick[:sample_size]
        assert len(pick) == min(sample_size, 10 * past)
        reference = ce_gradient(weight, bias, memory_x[pick], memory_y[pick])
        torch.testing.assert_close(edited["grad"], agem_projection(g, reference), rtol=1e-5, atol=1e-6)
        assert float(edited["grad"] @ reference) >= -1e-6
        projected += not torch.allclose(edited["grad"], raw["grad"])
    assert len(before.steps) == 18 and projected >= 6  # of 12 steps with a memory: 8 for both sizes when written


def test_a_parameter_the_loss_does_not_reach_keeps_no_gradient_and_does_not_move() -> None:
    torch.manual_seed(0)
    user = WithSpareHead()
    spare = user.spare.weight.detach().clone()
    callback = AGEM(patterns_per_experience=5)
    trainer, model = quiet_trainer(callbacks=[callback]), ContinualModule(user)
    for _ in range(3):
        trainer.fit(model, datamodule=make_tensor_stream(3))
    assert user.spare.weight.grad is None
    torch.testing.assert_close(user.spare.weight.detach(), spare, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- training
def test_agem_beats_naive_on_class_incremental_digits() -> None:
    naive, agem = (
        digits_run(callbacks, epochs=5, hidden=64)
        for callbacks in ([], [AGEM(patterns_per_experience=100, sample_size=200)])
    )
    # when written: naive 0.189 (forgetting 0.99), A-GEM 0.486 (forgetting 0.62). A single averaged
    # constraint is weak in class-incremental learning (Chaudhry et al. evaluate it task-incremental)
    assert naive.average_accuracy < 0.25
    assert agem.average_accuracy > naive.average_accuracy + 0.2
    assert agem.forgetting < naive.forgetting - 0.2


def test_agem_beats_naive_on_permuted_digits() -> None:
    naive, agem = (
        digits_run(callbacks, epochs=5, hidden=64, dm=permuted_digits(3))
        for callbacks in ([], [AGEM(patterns_per_experience=100, sample_size=64)])
    )
    # when written: naive 0.573 (forgetting 0.49, first experience 0.26 at the end), A-GEM 0.763 (0.20, 0.58)
    assert agem.average_accuracy > naive.average_accuracy + 0.1
    assert agem.forgetting < naive.forgetting - 0.2
    assert float(agem.accuracy_matrix[-1, 0]) > float(naive.accuracy_matrix[-1, 0]) + 0.2


# ------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_and_weights_only_checkpoint(tmp_path: Path) -> None:
    dm = make_tensor_stream(num_experiences=3)
    agem = AGEM(patterns_per_experience=6, sample_size=4, seed=2)
    trainer, model = quiet_trainer(callbacks=[agem]), ContinualModule(LinearClassifier())
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = agem.state_dict()
    assert set(state) == {"memory"}
    assert state["memory"]["experience"].tolist() == [0] * 6 + [1] * 6

    trainer.save_checkpoint(tmp_path / "agem.ckpt")
    saved = torch.load(tmp_path / "agem.ckpt", weights_only=True)["callbacks"][agem.state_key]
    for source in (state, saved):
        restored = AGEM(patterns_per_experience=6, sample_size=4, seed=2)
        restored.load_state_dict(source)
        for key in ("experience", "position"):
            torch.testing.assert_close(restored.memory.state_dict()[key], state["memory"][key], rtol=0, atol=0)
        for e in (0, 1):
            cpu = torch.device("cpu")
            for a, b in zip(restored.memory.batch(dm.train_stream, e, cpu), agem.memory.batch(dm.train_stream, e, cpu)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_instances_do_not_collide() -> None:
    assert AGEM(patterns_per_experience=10).state_key != AGEM(patterns_per_experience=20).state_key
    assert AGEM(10, sample_size=32).state_key != AGEM(10, sample_size=64).state_key


# epochs 0-1 train experience 0, 2-3 experience 1, 4-5 experience 2: "epoch=1" is saved before experience
# 0's on_experience_end, "epoch=2" in the middle of experience 1 (the draws then continue from its step)
@pytest.mark.parametrize("name", ["epoch=1", "epoch=2"])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, name: str) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        callbacks = [AGEM(patterns_per_experience=8, sample_size=5)]
        return fit_stream(
            checkpointing_trainer(path, callbacks), model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False
        )

    full = run(tmp_path / "full", None, 0)
    resumed = run(tmp_path / "resumed", tmp_path / "full" / f"{name}.ckpt", 123)
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [0, -1, 2.5, True, None])
def test_patterns_per_experience_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"AGEM: `patterns_per_experience`: expected a positive integer, got"):
        AGEM(patterns_per_experience=value)


@pytest.mark.parametrize("value", [0, -5, 8.0, False, "64"])
def test_sample_size_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"`sample_size`: expected a positive integer, got " + repr(value)):
        AGEM(patterns_per_experience=10, sample_size=value)
