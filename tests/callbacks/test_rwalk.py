"""RWalk: Fisher, path scores and normalisation against a hand-written loop, both forms, checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule
from lightning_cl.callbacks.rwalk import RWalk
from tests.callbacks.regularization_helpers import (
    assert_beats_naive,
    assert_both_forms_agree,
    assert_same_tensors,
    checkpoint_round_trip,
    experience_tensors,
    full_batch_stream,
    step_by_hand,
    task_gradient,
    tiny_module,
)
from tests.conftest import quiet_trainer

LR, STEPS, LAMBDA, ALPHA, DELTA_T = 0.1, 5, 0.5, 0.7, 2


def rwalk_by_hand(model: Any, experiences: int) -> list[dict[str, Any]]:
    """Full-batch gradient descent with RWalk written out, step by step (Avalanche's RWalkPlugin)."""
    dm = full_batch_stream()
    eps = torch.finfo(torch.float32).eps
    params = dict(model.named_parameters())
    fisher: dict[str, Tensor] = {}
    importance: dict[str, Tensor] = {}
    anchor: dict[str, Tensor] = {}
    experience_scores: dict[str, Tensor] = {}
    steps = 0
    states = []
    for k in range(experiences):
        x, y = experience_tensors(dm, k)
        checkpoint = {n: p.detach().clone() for n, p in params.items()}
        path = {n: torch.zeros_like(p) for n, p in params.items()}
        scores = {n: torch.zeros_like(p) for n, p in params.items()}
        for _ in range(STEPS):
            g = task_gradient(model, x, y)
            with torch.no_grad():
                for n, p in params.items():
                    fisher[n] = g[n].square() if n not in fisher else ALPHA * g[n].square() + (1 - ALPHA) * fisher[n]
                    move = -LR * (g[n] + (2 * LAMBDA * importance[n] * (p - anchor[n]) if importance else 0))
                    path[n] -= g[n] * move
                    p += move
                steps += 1
                if steps % DELTA_T == 0:
                    for n, p in params.items():
                        scores[n] += path[n] / (0.5 * fisher[n] * (p - checkpoint[n]).square() + eps)
                        path[n] = torch.zeros_like(p)
                        checkpoint[n] = p.detach().clone()
        experience_scores = {
            n: s if n not in experience_scores else 0.5 * (experience_scores[n] + s) for n, s in scores.items()
        }
        max_fisher = max(float(f.max()) for f in fisher.values())
        max_score = max(float(s.clamp_min(0).max()) for s in experience_scores.values())
        importance = {n: fisher[n] / max_fisher + experience_scores[n].clamp_min(0) / max_score for n in fisher}
        anchor = {n: p.detach().clone() for n, p in params.items()}
        states.append({"fisher": dict(fisher), "importance": importance, "anchor": anchor, "steps": steps})
    return states


@pytest.mark.parametrize("apply", ["loss", "grad"])
def test_importance_matches_a_hand_written_loop(apply: str) -> None:
    torch.manual_seed(0)
    user = tiny_module()
    expected = rwalk_by_hand(copy.deepcopy(user), experiences=2)
    rwalk = RWalk(ewc_lambda=LAMBDA, ewc_alpha=ALPHA, delta_t=DELTA_T, apply=apply)
    model, dm = ContinualModule(user), full_batch_stream()
    trainer = quiet_trainer(max_epochs=STEPS, callbacks=[rwalk])
    for k in range(2):
        trainer.fit(model, datamodule=dm)
        state = rwalk.state_dict()
        assert state["steps"] == expected[k]["steps"]
        for key in ("fisher", "importance", "anchor"):
            assert_same_tensors(state[key], expected[k][key], rtol=1e-4, atol=1e-5)
    # normalised: each of the two terms is at most 1, and each reaches 1 somewhere
    assert 1.0 < max(float(v.max()) for v in state["importance"].values()) <= 2.0 + 1e-6


def test_a_step_the_gradient_scaler_skips_is_not_counted() -> None:
    rwalk, model = RWalk(delta_t=1), ContinualModule(tiny_module())
    rwalk.on_experience_start(None, model, None)  # type: ignore[arg-type]
    step_by_hand(rwalk, model, skipped=True)
    state = rwalk.state_dict()
    assert state["steps"] == 0 and state["fisher"] == {}  # no inf in the Fisher
    step_by_hand(rwalk, model, skipped=False)
    state = rwalk.state_dict()
    assert state["steps"] == 1
    assert all(torch.allclose(v, torch.full_like(v, 0.25)) for v in state["fisher"].values())  # g ** 2
    assert all(v.isfinite().all() for v in state["scores"].values())


def test_loss_and_gradient_forms_give_the_same_parameters() -> None:
    # the task gradient is p.grad minus the penalty's in one form, read before it in the other:
    # equal up to rounding, which the importance carries into later steps
    assert_both_forms_agree(
        lambda apply: RWalk(ewc_lambda=1.0, delta_t=2, apply=apply),
        weights={"rtol": 1e-6, "atol": 1e-7},
        state={"rtol": 1e-3, "atol": 1e-5},
    )


def test_rwalk_beats_naive_on_permuted_digits() -> None:
    assert_beats_naive(RWalk(ewc_lambda=1.0), margin=0.3)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint_round_trip(RWalk(delta_t=2), RWalk(delta_t=2), tmp_path)


def test_two_instances_do_not_collide() -> None:
    keys = {
        RWalk().state_key,
        RWalk(ewc_lambda=1.0).state_key,
        RWalk(ewc_alpha=0.5).state_key,
        RWalk(delta_t=5).state_key,
    }
    assert len(keys) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ewc_lambda": -1}, ValueError, r"`ewc_lambda`: expected a non-negative number, got -1"),
        ({"ewc_alpha": 2.0}, ValueError, r"`ewc_alpha`: expected a number in \[0, 1\], got 2.0"),
        ({"ewc_alpha": "0.5"}, TypeError, r"`ewc_alpha`: expected a number in \[0, 1\], got str '0.5'"),
        ({"delta_t": 0}, ValueError, r"`delta_t`: expected an integer >= 1, got 0"),
        ({"delta_t": 2.5}, TypeError, r"`delta_t`: expected an integer >= 1, got float 2.5"),
        ({"apply": None}, ValueError, r"`apply`: expected one of \['loss', 'grad'\], got None"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RWalk(**kwargs)
