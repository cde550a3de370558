"""MAS: importance against a per-sample loop, the running average, the penalty, both forms."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_cl import ContinualModule
from lightning_cl.callbacks.mas import MAS
from tests.callbacks.regularization_helpers import (
    assert_beats_naive,
    assert_both_forms_agree,
    assert_same_tensors,
    checkpoint_round_trip,
    tiny_module,
    tiny_stream,
)
from tests.conftest import quiet_trainer


def mas_by_loop(model: nn.Module, dataset: Any) -> dict[str, Tensor]:
    """The definition: mean over samples of |d ||f(x)||^2 / d theta|, one sample at a time, no labels."""
    model.eval()
    out = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(len(dataset)):
        model.zero_grad()
        model(dataset[i][0].unsqueeze(0)).square().sum().backward()
        for name, p in model.named_parameters():
            out[name] += p.grad.abs() / len(dataset)  # type: ignore[union-attr]
    model.train()
    return out


def test_importance_is_a_running_average_of_the_mean_absolute_output_sensitivity() -> None:
    torch.manual_seed(0)
    user = tiny_module()
    dm, mas = tiny_stream(), MAS(lambda_reg=0.0, alpha=0.25, batch_size=7)
    model, trainer = ContinualModule(user), quiet_trainer(callbacks=[mas])
    trainer.fit(model, datamodule=dm)
    first = mas_by_loop(user, dm.train_stream[0].dataset)
    # Omega starts at zero: after one experience it is (1 - alpha) * Omega_new
    assert_same_tensors(mas.state_dict()["importance"], {k: 0.75 * v for k, v in first.items()}, rtol=1e-5, atol=1e-7)
    trainer.fit(model, datamodule=dm)
    second = mas_by_loop(user, dm.train_stream[1].dataset)
    expected = {k: 0.25 * 0.75 * first[k] + 0.75 * second[k] for k in first}
    state = mas.state_dict()
    assert_same_tensors(state["importance"], expected, rtol=1e-5, atol=1e-7)
    assert_same_tensors(state["anchor"], dict(user.named_parameters()), rtol=0, atol=0)


def test_penalty_by_hand() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.bias.fill_(2.0)
    mas = MAS(lambda_reg=0.5)
    mas.load_state_dict(
        {
            "importance": {"weight": torch.tensor([[2.0, 4.0]]), "bias": torch.tensor([1.0])},
            "anchor": {"weight": torch.zeros(1, 2), "bias": torch.tensor([1.0])},
        }
    )
    # 0.5 * (2 * 1 + 4 * 1 + 1 * 1) = 3.5
    assert mas.loss_terms(SimpleNamespace(module=SimpleNamespace(module=model)))["mas"].item() == pytest.approx(3.5)  # type: ignore[arg-type]


def test_no_penalty_before_the_first_experience_ends() -> None:
    assert MAS().loss_terms(SimpleNamespace(module=SimpleNamespace(module=nn.Linear(2, 1)))) == {}  # type: ignore[arg-type]


def test_loss_and_gradient_forms_give_the_same_parameters() -> None:
    # the gradient form performs the operations autograd performs on the loss term: bit for bit
    exact = {"rtol": 0.0, "atol": 0.0}
    assert_both_forms_agree(lambda apply: MAS(lambda_reg=0.5, alpha=0.5, apply=apply), weights=exact, state=exact)


def test_mas_beats_naive_on_permuted_digits() -> None:
    assert_beats_naive(MAS(lambda_reg=1.0, alpha=0.5), margin=0.2)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint_round_trip(MAS(0.5), MAS(0.5), tmp_path)


def test_two_instances_do_not_collide() -> None:
    assert len({MAS().state_key, MAS(lambda_reg=2.0).state_key, MAS(alpha=0.1).state_key}) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lambda_reg": -0.1}, ValueError, r"`lambda_reg`: expected a non-negative number, got -0.1"),
        ({"lambda_reg": None}, TypeError, r"`lambda_reg`: expected a non-negative number, got NoneType None"),
        ({"alpha": 1.5}, ValueError, r"`alpha`: expected a number in \[0, 1\], got 1.5"),
        ({"alpha": -0.5}, ValueError, r"`alpha`: expected a number in \[0, 1\], got -0.5"),
        ({"apply": "gradient"}, ValueError, r"`apply`: expected one of \['loss', 'grad'\], got 'gradient'"),
        ({"batch_size": -4}, ValueError, r"`batch_size`: expected a positive integer or None, got -4"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        MAS(**kwargs)
