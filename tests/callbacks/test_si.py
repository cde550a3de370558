"""SI: the path integral against a hand-written training loop, both penalty forms, real steps only, lambdas."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule
from lightning_cl.callbacks.si import SI
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

LR, STEPS, LAMBDA, EPS = 0.1, 3, 0.5, 1e-3


def si_by_hand(model: Any, experiences: int, cap: float | None) -> list[dict[str, dict[str, Tensor]]]:
    """Full-batch gradient descent with SI written out: omega from the task gradient, Omega after each experience."""
    dm = full_batch_stream()
    importance: dict[str, Tensor] = {}
    anchor: dict[str, Tensor] = {}
    states = []
    for k in range(experiences):
        x, y = experience_tensors(dm, k)
        params = dict(model.named_parameters())
        start = {n: p.detach().clone() for n, p in params.items()}
        omega = {n: torch.zeros_like(p) for n, p in params.items()}
        used = {n: v if cap is None else v.clamp_max(cap) for n, v in importance.items()}
        for _ in range(STEPS):
            g = task_gradient(model, x, y)
            with torch.no_grad():
                for n, p in params.items():
                    total = g[n] + (2 * LAMBDA * used[n] * (p - anchor[n]) if used else 0)
                    move = -LR * total
                    omega[n] -= g[n] * move  # the task gradient, not the penalty's
                    p += move
        with torch.no_grad():
            for n, p in params.items():
                previous = importance.get(n, torch.zeros_like(p))
                importance[n] = (previous + omega[n] / ((p - start[n]).square() + EPS)).clamp_min(0)
            anchor = {n: p.detach().clone() for n, p in params.items()}
        states.append({"importance": dict(importance), "anchor": dict(anchor)})
    return states


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "si_lambda"),
    [(24, 1, LAMBDA), (12, 2, LAMBDA), (24, 1, [9.9, LAMBDA, 0.0])],
    ids=["full-batch", "accumulated", "per-experience-lambda"],
)
@pytest.mark.parametrize("cap", [None, 0.05], ids=["uncapped", "capped"])
@pytest.mark.parametrize("apply", ["loss", "grad"])
def test_importance_matches_a_hand_written_loop(
    apply: str, cap: float | None, batch_size: int, accumulate: int, si_lambda: Any
) -> None:
    torch.manual_seed(0)
    user = tiny_module()
    expected = si_by_hand(copy.deepcopy(user), experiences=2, cap=cap)
    si = SI(si_lambda=si_lambda, eps=EPS, max_importance=cap, apply=apply)
    model, dm = ContinualModule(user), full_batch_stream(batch_size)
    trainer = quiet_trainer(max_epochs=STEPS, accumulate_grad_batches=accumulate, callbacks=[si])
    for k in range(2):
        trainer.fit(model, datamodule=dm)
        state = si.state_dict()
        assert trainer.global_step == STEPS * (k + 1)
        assert_same_tensors(state["importance"], expected[k]["importance"], rtol=1e-4, atol=1e-5)
        assert_same_tensors(state["anchor"], expected[k]["anchor"], rtol=1e-5, atol=1e-6)
    assert min(float(v.min()) for v in state["importance"].values()) >= 0
    assert max(float(v.max()) for v in state["importance"].values()) > 0.05  # so the cap binds somewhere


def test_a_step_the_gradient_scaler_skips_is_not_counted() -> None:
    si, model = SI(si_lambda=1.0), ContinualModule(tiny_module())
    si.on_experience_start(None, model, SimpleNamespace(index=0))  # type: ignore[arg-type]
    step_by_hand(si, model, skipped=True)
    assert si.state_dict()["path"] == {}
    step_by_hand(si, model, skipped=False)
    path = si.state_dict()["path"]
    # a real step of -0.1 * g with g = 0.5 everywhere: omega = -g * move = 0.025
    assert path.keys() == dict(model.module.named_parameters()).keys()
    assert all(torch.allclose(v, torch.full_like(v, 0.025)) for v in path.values())


def test_loss_and_gradient_forms_give_the_same_parameters() -> None:
    # the task gradient is p.grad minus the penalty's in one form, read before it in the other:
    # equal up to rounding, which the importance carries into later steps
    assert_both_forms_agree(
        lambda apply: SI(si_lambda=0.5, eps=1e-3, max_importance=None, apply=apply),
        weights={"rtol": 1e-6, "atol": 1e-7},
        state={"rtol": 1e-4, "atol": 1e-6},
    )


def test_si_beats_naive_on_permuted_digits() -> None:
    # the importance is capped at 1e-3 by default (Avalanche's cap): SI acts at a large si_lambda
    assert_beats_naive(SI(si_lambda=1000.0), margin=0.4)


def test_a_lambda_list_needs_one_value_per_experience() -> None:
    trainer = quiet_trainer(callbacks=[SI(si_lambda=[1.0, 2.0])])
    with pytest.raises(ValueError, match=r"`si_lambda`: expected one value per experience \(3\), got 2"):
        trainer.fit(ContinualModule(tiny_module()), datamodule=full_batch_stream())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint_round_trip(SI(0.5, eps=1e-3), SI(0.5, eps=1e-3), tmp_path)


def test_two_instances_do_not_collide() -> None:
    assert len({SI(1.0).state_key, SI(2.0).state_key, SI([1.0, 2.0]).state_key, SI(1.0, eps=0.1).state_key}) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"si_lambda": -1.0}, ValueError, r"`si_lambda`: expected a non-negative number, got -1.0"),
        ({"si_lambda": "1"}, TypeError, r"`si_lambda`: expected a non-negative number, got str '1'"),
        ({"si_lambda": []}, ValueError, r"`si_lambda`: expected a non-negative number or one per experience"),
        ({"si_lambda": [1.0, -2.0]}, ValueError, r"`si_lambda\[1\]`: expected a non-negative number, got -2.0"),
        ({"si_lambda": 1.0, "eps": 0.0}, ValueError, r"`eps`: expected a positive number, got 0.0"),
        ({"si_lambda": 1.0, "eps": -1.0}, ValueError, r"`eps`: expected a positive number, got -1.0"),
        ({"si_lambda": 1.0, "max_importance": 0.0}, ValueError, r"`max_importance`: expected a positive number"),
        ({"si_lambda": 1.0, "apply": "loss_term"}, ValueError, r"`apply`: expected one of \['loss', 'grad'\]"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SI(**kwargs)
