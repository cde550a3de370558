"""GEM: the quadratic program against closed forms, brute force and the KKT conditions, the projected
gradient written into ``p.grad`` against a hand-computed one, forgetting against naive, checkpoints,
resume and bad input."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.callbacks.gem import GEM, gem_projection, solve_nonnegative_qp
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


def mat(*rows: tuple[float, ...]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------- the quadratic program
def enumerate_active_sets(P: Tensor, c: Tensor, lower: float) -> Tensor:
    """``argmin 0.5 v'Pv + c'v, v >= lower`` by brute force: every choice of free variables is solved
    exactly (the others at the bound); the best feasible one wins."""
    t, best, best_value = len(c), None, None
    for r in range(t + 1):
        for free in map(list, itertools.combinations(range(t), r)):
            v = torch.full((t,), lower, dtype=torch.float64)
            fixed = [i for i in range(t) if i not in free]
            if free:
                v[free] = torch.linalg.solve(P[free][:, free], -(c[free] + P[free][:, fixed] @ v[fixed]))
            value = float(0.5 * v @ P @ v + c @ v)
            if bool((v >= lower - 1e-12).all()) and (best_value is None or value < best_value):
                best, best_value = v, value
    assert best is not None
    return best


def assert_kkt(P: Tensor, c: Tensor, lower: float, v: Tensor, atol: float = 1e-8) -> None:
    """Optimality of a bound-constrained convex QP: feasible, the gradient vanishes on the free
    variables and points into the bound on the others."""
    gradient = P @ v + c
    assert bool((v >= lower - atol).all())
    assert bool((gradient >= -atol).all())
    torch.testing.assert_close(gradient * (v - lower), torch.zeros_like(v), rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("P", "c", "lower", "expected"),
    [
        (torch.eye(2), vec(-1.0, 2.0), 0.0, vec(1.0, 0.0)),  # separable: clip -c at the bound
        (torch.eye(2), vec(-1.0, -3.0), 0.0, vec(1.0, 3.0)),  # interior: v = -P^-1 c
        (mat((2.0, 1.0), (1.0, 2.0)), vec(-3.0, 0.0), 0.0, vec(1.5, 0.0)),  # v2 at 0: v1 = 3 / 2
        (mat((2.0, 1.0), (1.0, 2.0)), vec(-3.0, -3.0), 0.0, vec(1.0, 1.0)),  # P v = 3 (1, 1)
        (torch.eye(2), vec(-1.0, 2.0), 0.5, vec(1.0, 0.5)),  # a bound of 0.5 holds v2 up
        (mat((2.0, 1.0), (1.0, 2.0)), vec(-3.0, 0.0), 0.5, vec(1.25, 0.5)),  # 2 v1 + 0.5 = 3
    ],
)
def test_qp_matches_closed_forms(P: Tensor, c: Tensor, lower: float, expected: Tensor) -> None:
    P = P.double()
    v = solve_nonnegative_qp(P, c, lower)
    torch.testing.assert_close(v, expected)
    assert_kkt(P, c, lower, v)


@pytest.mark.parametrize("lower", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(6))
def test_qp_matches_brute_force_on_random_problems(seed: int, lower: float) -> None:
    g = torch.Generator().manual_seed(seed)
    t = 2 + seed % 3
    A = torch.randn(t, 5, generator=g, dtype=torch.float64)
    P = A @ A.T + 1e-3 * torch.eye(t, dtype=torch.float64)
    c = torch.randn(t, generator=g, dtype=torch.float64) * 3
    v = solve_nonnegative_qp(P, c, lower)
    torch.testing.assert_close(v, enumerate_active_sets(P, c, lower))
    assert_kkt(P, c, lower, v)


@pytest.mark.parametrize("correlation", [0.9, 0.9999, 0.9999999])
def test_qp_is_exact_on_nearly_parallel_memories(correlation: float) -> None:
    # the memory gradients of similar experiences are nearly parallel: P is ill-conditioned, where a
    # coordinate descent stops far from the optimum (it returned (1.27, 1.73) here at 0.9999)
    P = mat((1.0, correlation), (correlation, 1.0))
    optimum = vec(1.0, 2.0)
    v = solve_nonnegative_qp(P, -(P @ optimum), 0.0)
    torch.testing.assert_close(v, optimum, rtol=1e-6, atol=1e-6)


def project_on_grid(g: Tensor, G: Tensor, half_width: float = 2.0, steps: int = 801) -> Tensor:
    """The feasible point ``G z >= 0`` of a 2-D grid closest to ``g``: GEM's primal problem by brute force."""
    axis = torch.linspace(-half_width, half_width, steps, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    feasible = (z @ G.T >= 0).all(dim=1)
    distance = ((z - g) ** 2).sum(1).masked_fill(~feasible, torch.inf)
    return z[torch.argmin(distance)]


@pytest.mark.parametrize(
    ("g", "G", "expected"),
    [
        (vec(1.0, -1.0), mat((0.0, 1.0)), vec(1.0, 0.0)),  # one constraint: drop the conflicting part
        (vec(1.0, -2.0), mat((1.0, 1.0)), vec(1.5, -1.5)),  # g - (g.a / a.a) a
        (vec(-1.0, -1.0), mat((1.0, 0.0), (0.0, 1.0)), vec(0.0, 0.0)),  # both active: the cone's apex
        (vec(1.0, -2.0), mat((0.0, 1.0), (1.0, 1.0)), vec(1.0, 0.0)),  # two constraints, one active
        (vec(-2.0, 1.0), mat((1.0, 0.0), (1.0, 1.0)), vec(0.0, 1.0)),  # the other one active
    ],
)
def test_projection_matches_closed_forms_and_the_grid(g: Tensor, G: Tensor, expected: Tensor) -> None:
    z = gem_projection(g, G, margin=0.0, eps=0.0)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(z, project_on_grid(g, G), rtol=0, atol=0.01)  # grid step 0.005


@pytest.mark.parametrize("seed", range(8))
def test_projection_is_the_closest_non_conflicting_gradient(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gradient = torch.randn(2, generator=g, dtype=torch.float64)
    G = torch.randn(1 + seed % 2, 2, generator=g, dtype=torch.float64)
    z = gem_projection(gradient, G, margin=0.0, eps=0.0)
    assert bool((G @ z >= -1e-12).all())
    # no feasible grid point is closer to g (a boundary not aligned with the grid may keep the grid's
    # best point a few steps away along it, so compare distances: within one grid diagonal)
    best = project_on_grid(gradient, G, half_width=3.0, steps=601)  # step 0.01
    distance, grid_distance = float((z - gradient).norm()), float((best - gradient).norm())
    assert grid_distance - 0.0142 <= distance <= grid_distance + 1e-12


def test_projection_in_many_dimensions_satisfies_the_primal_kkt_conditions() -> None:
    # min |z - g|^2 s.t. G z >= 0 is solved by z = g + G'v with v >= 0, G z >= 0, v_i (G z)_i = 0
    g = torch.Generator().manual_seed(0)
    G = torch.randn(4, 20, generator=g, dtype=torch.float64)
    gradient = -G.sum(0) + 0.5 * torch.randn(20, generator=g, dtype=torch.float64)
    assert bool((G @ gradient < 0).any())
    z = gem_projection(gradient, G, margin=0.0, eps=0.0)
    v = torch.linalg.lstsq(G.T, z - gradient).solution
    torch.testing.assert_close(G.T @ v, z - gradient)
    assert bool((v >= -1e-9).all()) and bool((G @ z >= -1e-9).all())
    torch.testing.assert_close(v * (G @ z), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("G", [mat((0.0, 1.0)), mat((1.0, 0.0), (0.0, 1.0)), mat((1.0, 1.0), (-1.0, 2.0))])
def test_no_conflict_means_no_projection(G: Tensor) -> None:
    gradient = vec(1.0, 1.0)
    assert bool((G @ gradient >= 0).all())
    assert gem_projection(gradient, G, margin=0.5) is gradient  # not even a copy


@pytest.mark.parametrize(
    ("g", "margin", "expected"),
    [
        (vec(1.0, -1.0), 0.5, vec(1.0, 0.0)),  # v = -g.a / a.a = 1 exceeds the margin: on the boundary
        (vec(1.0, -0.2), 0.5, vec(1.0, 0.3)),  # v = 0.2 < 0.5: pushed past the boundary, z = g + 0.5 a
        (vec(1.0, -0.2), 2.0, vec(1.0, 1.8)),
    ],
)
def test_margin_is_a_lower_bound_of_the_dual(g: Tensor, margin: float, expected: Tensor) -> None:
    # one constraint a = (0, 1): the dual min 0.5 v^2 + (a.g) v, v >= margin gives v = max(margin, -a.g)
    torch.testing.assert_close(gem_projection(g, mat((0.0, 1.0)), margin=margin, eps=0.0), expected)


def test_margin_against_a_brute_force_dual_on_a_grid() -> None:
    g, G, margin = vec(1.0, -2.0), mat((0.0, 1.0), (1.0, 1.0)), 0.25
    axis = torch.linspace(margin, 4.0, 1501, dtype=torch.float64)
    v = torch.cartesian_prod(axis, axis)
    P = G @ G.T
    dual = 0.5 * ((v @ P) * v).sum(1) + v @ (G @ g)
    best = v[torch.argmin(dual)]
    torch.testing.assert_close(gem_projection(g, G, margin=margin, eps=0.0), G.T @ best + g, rtol=0, atol=0.01)


def test_eps_regularises_the_dual_as_in_the_reference_code() -> None:
    # one active constraint: (a.a + eps) v = -a.g, z = g + v a; the constraint then holds up to eps v:
    # a.z = -eps v (GEM's default eps = 1e-3 lets a tiny conflict through, as the reference code does)
    g, a, eps = vec(1.0, -1.0), vec(0.0, 2.0), 1e-3
    v = 2.0 / (4.0 + eps)
    z = gem_projection(g, a[None], eps=eps)
    torch.testing.assert_close(z, g + v * a)
    torch.testing.assert_close(a @ z, torch.tensor(-eps * v, dtype=torch.float64))


# ------------------------------------------------------------------- the gradient in p.grad
@pytest.mark.parametrize("memory_strength", [0.0, 0.5])
def test_the_projected_gradient_is_written_into_the_parameters(memory_strength: float) -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3)
    before, after = GradientRecorder(), GradientRecorder()
    gem = GEM(patterns_per_experience=10, memory_strength=memory_strength)
    trainer = quiet_trainer(max_epochs=2, callbacks=[before, gem, after])
    model = ContinualModule(LinearClassifier(lr=0.5))
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert len(gem.memory) == 30 and gem.memory.experiences() == [0, 1, 2]

    memory = {e: samples(dm.train_stream[e].dataset, gem.memory.position[gem.memory.experience == e]) for e in range(3)}
    projected = 0
    for raw, edited in zip(before.steps, after.steps):
        weight, bias = raw["params"]
        x, y = raw["batch"]
        g = ce_gradient(weight, bias, x, y)
        torch.testing.assert_close(raw["grad"], g, rtol=1e-5, atol=1e-6)  # the hand formula is Lightning's gradient
        if raw["experience"] == 0:  # nothing stored yet: nothing changes
            torch.testing.assert_close(edited["grad"], raw["grad"], rtol=0, atol=0)
            continue
        G = torch.stack([ce_gradient(weight, bias, *memory[e]) for e in range(raw["experience"])])
        expected = gem_projection(g, G, margin=memory_strength)
        torch.testing.assert_close(edited["grad"], expected, rtol=1e-5, atol=1e-6)
        projected += not torch.allclose(edited["grad"], raw["grad"])
    assert len(before.steps) == 18 and projected >= 8  # of 12 steps with a memory: 10 and 12 when written


def test_a_parameter_the_loss_does_not_reach_keeps_no_gradient_and_does_not_move() -> None:
    torch.manual_seed(0)
    user = WithSpareHead()
    spare = user.spare.weight.detach().clone()
    callback = GEM(patterns_per_experience=5)
    trainer, model = quiet_trainer(callbacks=[callback]), ContinualModule(user)
    for _ in range(3):
        trainer.fit(model, datamodule=make_tensor_stream(3))
    assert user.spare.weight.grad is None
    torch.testing.assert_close(user.spare.weight.detach(), spare, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- training
def test_gem_beats_naive_on_class_incremental_digits() -> None:
    naive, gem = digits_run([]), digits_run([GEM(patterns_per_experience=50, memory_strength=0.5)])
    # when written: naive 0.166 (forgetting 0.99), GEM 0.882 (forgetting 0.05)
    assert naive.average_accuracy < 0.25
    assert gem.average_accuracy > naive.average_accuracy + 0.5
    assert gem.forgetting < 0.2


def test_gem_beats_naive_on_permuted_digits() -> None:
    naive, gem = (
        digits_run(callbacks, epochs=5, hidden=64, dm=permuted_digits(3))
        for callbacks in ([], [GEM(patterns_per_experience=100, memory_strength=0.5)])
    )
    # when written: naive 0.573 (forgetting 0.49), GEM 0.876 (forgetting 0.02)
    assert gem.average_accuracy > naive.average_accuracy + 0.2
    assert gem.forgetting < naive.forgetting - 0.3


# ------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_and_weights_only_checkpoint(tmp_path: Path) -> None:
    dm = make_tensor_stream(num_experiences=3)
    gem = GEM(patterns_per_experience=7, memory_strength=0.5, seed=3)
    trainer, model = quiet_trainer(callbacks=[gem]), ContinualModule(LinearClassifier())
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = gem.state_dict()
    assert set(state) == {"memory"} and set(state["memory"]) == {"experience", "position"}
    assert state["memory"]["experience"].tolist() == [0] * 7 + [1] * 7

    trainer.save_checkpoint(tmp_path / "gem.ckpt")
    saved = torch.load(tmp_path / "gem.ckpt", weights_only=True)["callbacks"][gem.state_key]
    for source in (state, saved):
        restored = GEM(patterns_per_experience=7, memory_strength=0.5, seed=3)
        restored.load_state_dict(source)
        for key in ("experience", "position"):
            torch.testing.assert_close(restored.memory.state_dict()[key], state["memory"][key], rtol=0, atol=0)
        for e in (0, 1):
            for a, b in zip(
                restored.memory.batch(dm.train_stream, e, torch.device("cpu")),
                gem.memory.batch(dm.train_stream, e, torch.device("cpu")),
            ):
                torch.testing.assert_close(a, b, rtol=0, atol=0)

    empty = GEM(patterns_per_experience=7)
    empty.load_state_dict({})  # keys are read with defaults
    assert len(empty.memory) == 0


def test_the_stored_patterns_depend_on_the_seed_only() -> None:
    dm = make_tensor_stream(num_experiences=2)
    first, second, other = GEM(5, seed=1), GEM(5, seed=1), GEM(5, seed=2)
    for gem in (first, second, other):
        gem.on_experience_end(None, None, dm.train_stream[0])  # type: ignore[arg-type]
    assert first.memory.position.tolist() == second.memory.position.tolist()
    assert first.memory.position.tolist() != other.memory.position.tolist()
    assert len(set(first.memory.position.tolist())) == 5


def test_two_instances_do_not_collide() -> None:
    assert GEM(patterns_per_experience=10).state_key != GEM(patterns_per_experience=20).state_key
    assert GEM(10, memory_strength=0.1).state_key != GEM(10, memory_strength=0.2).state_key


# epochs 0-1 train experience 0, 2-3 experience 1, 4-5 experience 2. "epoch=1" is saved before experience
# 0's on_experience_end (the memory is still empty); "epoch=2" in the middle of experience 1
@pytest.mark.parametrize("name", ["epoch=1", "epoch=2"])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, name: str) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        callbacks = [GEM(patterns_per_experience=8, memory_strength=0.5)]
        return fit_stream(
            checkpointing_trainer(path, callbacks), model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False
        )

    full = run(tmp_path / "full", None, 0)
    resumed = run(
        tmp_path / "resumed", tmp_path / "full" / f"{name}.ckpt", 123
    )  # other weights: all from the checkpoint
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [0, -3, 1.5, True, None])
def test_patterns_per_experience_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"GEM: `patterns_per_experience`: expected a positive integer, got"):
        GEM(patterns_per_experience=value)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_memory_strength_must_be_non_negative_and_finite(value: float) -> None:
    with pytest.raises(ValueError, match=r"`memory_strength`: expected a non-negative finite number, got"):
        GEM(patterns_per_experience=10, memory_strength=value)


def test_memory_strength_must_be_a_number() -> None:
    with pytest.raises(TypeError, match=r"`memory_strength`: expected a non-negative number"):
        GEM(patterns_per_experience=10, memory_strength="0.5")  # type: ignore[arg-type]
